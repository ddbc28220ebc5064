"""The run folder a training job will write, read from its arguments at submit time.

The batch script needs it (the stop-request and acknowledgement files live there) and cannot
afford to load the config itself. Resolution follows `avsiam pretrain|finetune`: `--out DIR`
wins over `out_dir=DIR`, which wins over the YAML's `out_dir`; only a YAML without one makes
this load the config the full way (for the dataclass default). Relative folders are taken from
the job's working folder (where sbatch runs, or `--chdir`), so the result is absolute.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

PRESET_DIR = Path(__file__).resolve().parents[1] / "trainer" / "configs"
PRESET_PREFIX = {"pretrain": "", "finetune": "finetune_"}


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value of `flag` (`--out X` or `--out=X`) among the arguments."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def _override(args: Sequence[str], key: str) -> str | None:
    value = None
    for arg in args:
        if arg.startswith(key + "=") and not arg.startswith("-"):
            value = yaml.safe_load(arg[len(key) + 1:])
            value = None if value is None else str(value)
    return value


def config_file(kind: str, name_or_path: str, cwd: Path) -> Path | None:
    """The YAML of `--config` (a file, or a preset name); None when neither exists."""
    path = Path(name_or_path)
    path = path if path.is_absolute() else cwd / path
    if path.is_file():
        return path
    prefix = PRESET_PREFIX[kind]
    for candidate in (PRESET_DIR / f"{name_or_path}.yaml", PRESET_DIR / f"{prefix}{name_or_path}.yaml"):
        if candidate.is_file() and candidate.stem.startswith(prefix):
            return candidate
    return None


def _default_out_dir(kind: str) -> str:
    if kind == "pretrain":
        from trainer.engine.config import PretrainConfig as Config
    else:
        from trainer.finetune.config import FinetuneConfig as Config
    return next(f.default for f in Config.__dataclass_fields__.values() if f.name == "out_dir")


def run_folder(kind: str, job_args: Sequence[str], cwd: Path) -> Path:
    """The absolute run folder of `avsiam KIND JOB_ARGS` started in `cwd`. ValueError when the
    arguments name no config or a config that does not exist (the job would fail in the queue)."""
    out = _flag_value(job_args, "--out") or _override(job_args, "out_dir")
    if out is None:
        name = _flag_value(job_args, "--config")
        if name is None:
            raise ValueError(f"the job arguments after -- need --config PRESET_OR_YAML (as for "
                             f"avsiam {kind})")
        path = config_file(kind, name, cwd)
        if path is None:
            raise ValueError(f"--config {name!r}: no such file (from {cwd}) and no such "
                             f"{kind} preset in {PRESET_DIR}")
        raw = yaml.safe_load(path.read_text()) or {}
        out = raw.get("out_dir") if isinstance(raw, dict) else None
        out = str(out) if out is not None else _default_out_dir(kind)
    folder = Path(out).expanduser()
    return folder if folder.is_absolute() else (cwd / folder).resolve()
