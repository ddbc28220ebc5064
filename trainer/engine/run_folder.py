"""A run folder that never loses work and explains itself.

Before a run starts (`open_run_folder`, called by `avsiam pretrain|finetune` before any process group
or engine exists):

- refusal: a folder that already holds checkpoints is continued only with `--resume auto`, or started
  afresh with `--resume none --overwrite` (which first deletes its checkpoints, metrics, TensorBoard
  logs and train.log); anything else stops in one line naming the newest step, so a re-run never
  restarts from step 0 silently and retention never deletes the new run's checkpoints for the old;
- rank 0 then writes `config.yaml` (the resolved config: `--config RUN/config.yaml` runs it again),
  appends one record per (re)start to `run.json` (command line, git commit and dirty flag, versions,
  host names, world size, start time, the checkpoint and step it resumed from) and opens `train.log`
  (run_log.py), where "resumed from step N (path)" is the first line of a resumed start;
- one run at a time: rank 0 holds OUT/run.lock from before the checks to the end (run_lock.py).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint_files import COMPLETE
from .run_lock import hold_run_lock

log = logging.getLogger("trainer.engine")

RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
PACKAGES = ("torch", "deepspeed", "timm", "webdataset", "numpy", "safetensors")
# What --overwrite deletes (besides the checkpoints): the outputs a new run writes afresh.
RUN_OUTPUTS = ("metrics.jsonl", "tensorboard", "train.log", RUN_JSON, CONFIG_YAML,
               "epochs", "model.safetensors", "finetune.json")      # the last three: fine-tuning


@dataclass(frozen=True)
class RunStart:
    """How this start of the run begins: afresh (step 0) or from a checkpoint."""

    resumed_from: str | None
    step: int


def existing_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders (step_N with complete.json) under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and p.name[5:].isdigit()
                  and (p / COMPLETE).exists())


def check_rerun(cfg, command: str, overwrite: bool) -> None:
    """Refuse to start in a folder holding checkpoints unless --resume auto or --overwrite says so."""
    resume, root = cfg.checkpoint.resume, Path(cfg.checkpoint_dir)
    if overwrite and resume == "auto":
        raise ValueError(f"avsiam {command}: --overwrite starts afresh and --resume auto continues; "
                         "give one of them")
    if overwrite and resume != "none" and _inside(Path(resume), root):
        raise ValueError(f"avsiam {command}: --overwrite would delete {resume}, the checkpoint to resume "
                         "from; resume from it with --resume auto instead")
    found = existing_checkpoints(root)
    if not found or resume == "auto" or overwrite or (resume != "none" and _inside(Path(resume), root)):
        return                  # nothing to lose, or continuing this run (from an earlier point)
    newest = found[-1].name
    raise ValueError(f"avsiam {command}: {root} already holds checkpoints (newest {newest}); continue "
                     f"that run with --resume auto, or start afresh with --resume none --overwrite "
                     f"(deletes them), or pick another --out")


def open_run_folder(cfg, command: str, argv: list[str], overwrite: bool = False) -> None:
    """The checks and records of the module doc (records on rank 0 only)."""
    from .distributed import detect_env
    from .run_log import log_line, open_run_log

    env = detect_env()
    out = Path(cfg.out_dir)
    if env.rank == 0:
        hold_run_lock(out, command)          # before the folder is read: one run at a time
    check_rerun(cfg, command, overwrite)
    if env.rank != 0:
        return
    if overwrite:
        wipe_run(out, Path(cfg.checkpoint_dir))
    out.mkdir(parents=True, exist_ok=True)
    open_run_log(out)
    write_config_yaml(cfg, out / CONFIG_YAML)
    start = resume_start(cfg)
    supersede_later(Path(cfg.checkpoint_dir), start.step)
    append_run_record(out / RUN_JSON, run_record(command, argv, env, start))
    if start.resumed_from is not None:
        log_line(f"{command}: resumed from step {start.step} ({start.resumed_from})")
    else:
        log_line(f"{command}: starting at step 0 in {out} ({env.world_size} rank(s))")


def wipe_run(out: Path, checkpoints: Path) -> None:
    """--overwrite: delete the old run's checkpoints (complete or not) and outputs."""
    if checkpoints.is_dir():
        for folder in checkpoints.iterdir():
            if folder.name.startswith("step_") and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def supersede_later(root: Path, step: int) -> None:
    """Checkpoints after the step this run starts from (damaged ones it fell back past, or a later
    branch it chose to leave) are renamed `step_N.superseded`: kept for inspection, never resumed,
    pruned or mistaken for this run's own."""
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and folder.name.startswith("step_") and folder.name[5:13].isdigit() \
                and int(folder.name[5:13]) > step and "." not in folder.name and (folder / COMPLETE).exists():
            target = folder.with_name(folder.name + ".superseded")
            n = 1
            while target.exists():
                n += 1
                target = folder.with_name(f"{folder.name}.superseded{n}")
            folder.rename(target)
            log.warning("%s is after step %d, where this run starts: moved aside to %s", folder.name,
                        step, target.name)


def resume_start(cfg) -> RunStart:
    """Which checkpoint the run will load (the same choice the loop makes)."""
    from .checkpoint import find_resume_point

    point = find_resume_point(cfg.checkpoint.resume, Path(cfg.checkpoint_dir))
    return RunStart(None, 0) if point is None else RunStart(str(point.path), point.step)


def write_config_yaml(cfg, path: Path) -> None:
    import yaml

    text = ("# The resolved config of this run: `--config " + str(path) + "` runs it again.\n"
            + yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_record(command: str, argv: list[str], env, start: RunStart) -> dict:
    return {
        "command": command, "argv": list(argv), "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_unix": time.time(), "git": git_state(), "python": platform.python_version(),
        "versions": package_versions(), "host": socket.gethostname(),
        "hosts": os.environ.get("SLURM_JOB_NODELIST") or socket.gethostname(),
        "world_size": env.world_size, "launcher": env.launcher,
        "resumed_from": start.resumed_from, "resumed_step": start.step if start.resumed_from else None,
    }


def append_run_record(path: Path, record: dict) -> None:
    """run.json holds {"starts": [record, ...]}, one per (re)start, oldest first."""
    try:
        data = json.loads(path.read_text())
        starts = data["starts"] if isinstance(data, dict) and isinstance(data.get("starts"), list) else []
    except (OSError, ValueError):
        starts = []
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"starts": starts + [record]}, indent=1) + "\n")
    os.replace(tmp, path)


def git_state() -> dict:
    """Commit and dirty flag of the checkout holding this code (None outside git)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
