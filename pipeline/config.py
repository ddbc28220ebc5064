"""`ShardConfig`: one sharding job (inputs, plan, sample parameters, limits, parallelism)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pipeline.manifest import KINDS, ManifestError
from pipeline.params import ClipParams, MediaLimits
from pipeline.plan import PlanParams

SLURM_TASK_ENV = "SLURM_ARRAY_TASK_ID"
SLURM_COUNT_ENV = "SLURM_ARRAY_TASK_COUNT"


class ConfigError(ValueError):
    """An invalid job setting; the message names the flag."""


@dataclass(kw_only=True)
class ShardConfig:
    """Everything `avsiam shard` needs; `plan`, `clip` and `limits` are owned by their modules."""

    out: Path
    """Output folder: shards, manifest.parquet, dataset.json, logs/."""
    videos: Path
    """Folder of media files (file names from the plan's template, or the folder itself)."""
    manifest: Path | None = None
    """Segments CSV / VGGSound CSV / generic CSV or Parquet; None = every file under `videos`."""
    manifest_format: str = "auto"
    labels: Path | None = None
    """class_labels_indices.csv (or a label list); None = sorted labels of the manifest."""
    select_split: str | None = None
    """Keep only manifest rows of this split (VGGSound's train/test column)."""
    plan: PlanParams = field(default_factory=PlanParams)
    clip: ClipParams = field(default_factory=ClipParams)
    limits: MediaLimits = field(default_factory=MediaLimits)
    workers: int = 1
    task_index: int | None = None
    """This task's index for SLURM arrays (shards with id % num_tasks == task_index)."""
    num_tasks: int | None = None
    retry_failed: bool = False
    """Redo the failed rows of committed shards."""
    allow_missing: bool = False
    """Go on when none of the first planned rows has its file (else the pre-flight stops)."""
    progress: bool = True
    recycle_after: int = 1000
    """Replace each worker after this many clips (contains leaks)."""
    decode_batch: int = 4
    """Rows a worker decodes with one ffmpeg process (1: one process per row); the shards are the
    same bytes whatever the value."""

    def __post_init__(self) -> None:
        self.out, self.videos = Path(self.out), Path(self.videos)
        self.manifest = Path(self.manifest) if self.manifest else None
        self.labels = Path(self.labels) if self.labels else None
        if self.manifest_format not in KINDS:
            raise ConfigError(f"--manifest-format must be one of {', '.join(KINDS)}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.decode_batch < 1:
            raise ConfigError(f"--decode-batch must be >= 1, got {self.decode_batch}")
        self.task_index, self.num_tasks = resolve_task(self.task_index, self.num_tasks)

    @property
    def task_timeout_s(self) -> float:
        """Wall-clock limit of one row in a worker: probe + decode limits + 60 s for the rest."""
        return self.limits.probe_timeout_s + self.limits.decode_timeout_s + 60.0


def resolve_task(index: int | None, count: int | None,
                 environ: dict | None = None) -> tuple[int, int]:
    """(task_index, num_tasks) from the flags, else SLURM_ARRAY_TASK_ID/_COUNT, else (0, 1).

    SLURM numbers array tasks from --array's first value; use --array=0-(N-1)."""
    env = os.environ if environ is None else environ
    if index is None and count is None and env.get(SLURM_TASK_ENV) and env.get(SLURM_COUNT_ENV):
        index, count = int(env[SLURM_TASK_ENV]), int(env[SLURM_COUNT_ENV])
    index = 0 if index is None else index
    count = 1 if count is None else count
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--task-index must be in 0..num_tasks-1 (got {index} of {count}); "
                          f"with SLURM use --array=0-{max(count - 1, 0)}")
    return index, count


def check_inputs(cfg: ShardConfig) -> None:
    """The manifest and labels files exist and are readable files (not folders): one-line errors
    before anything is started."""
    for path, flag in ((cfg.manifest, "--manifest"), (cfg.labels, "--labels")):
        if path is None:
            continue
        if path.is_dir():
            hint = " (omit --manifest to take every media file under --videos)" \
                if flag == "--manifest" else ""
            raise ConfigError(f"{flag} {path} is a folder; pass the file itself{hint}")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: {exc.strerror}; pass an existing, readable "
                              f"file") from None


@contextmanager
def utf8_input(path: Path | None, flag: str) -> Iterator[None]:
    """Turn a UnicodeDecodeError while reading `path` into a one-line ManifestError that says
    where the first byte that is not UTF-8 is."""
    try:
        yield
    except UnicodeDecodeError:
        data = path.read_bytes() if path else b""
        try:
            data.decode("utf-8")
            where = ""
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            where = f" (line {line}, byte {exc.start}: {data[exc.start:exc.start + 4]!r})"
        raise ManifestError(f"{flag} {path} is not UTF-8 text{where}; save it as UTF-8 (e.g. "
                            f"iconv -f latin1 -t utf-8) and pass that file to {flag}") from None
