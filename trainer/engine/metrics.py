"""Metric sinks behind one small interface: `log(step, values)` and `close()`.

Rank 0 writes `metrics.jsonl` (one JSON object per record, with `step` and `time` in unix
seconds) and TensorBoard event files under `tensorboard/`; other ranks get a `NullLogger`. On resume from step S, records after S are
dropped from the JSONL and purged from TensorBoard, so a resumed run leaves no duplicate steps.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Mapping


class MetricsLogger:
    """Interface of a metric sink."""

    def log(self, step: int, values: Mapping[str, float | int | None]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NullLogger(MetricsLogger):
    def log(self, step, values) -> None:
        pass


class JsonlLogger(MetricsLogger):
    """Appends `{"step": S, ...}` lines; flushes every record so a killed run keeps its metrics."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_jsonl(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")

    def log(self, step, values) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}   # unix seconds
        record.update({k: _jsonable(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger(MetricsLogger):
    """Scalars under their names (`loss/contrastive`, `perf/mfu`, ...)."""

    def __init__(self, log_dir: str | Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, step, values) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiLogger(MetricsLogger):
    def __init__(self, *loggers: MetricsLogger) -> None:
        self.loggers = loggers

    def log(self, step, values) -> None:
        for logger in self.loggers:
            logger.log(step, values)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_metrics(out_dir: str | Path, is_main: bool, resume_step: int | None = None) -> MetricsLogger:
    """JSONL + TensorBoard on the main rank, nothing elsewhere."""
    if not is_main:
        return NullLogger()
    out = Path(out_dir)
    return MultiLogger(JsonlLogger(out / "metrics.jsonl", resume_step),
                       TensorBoardLogger(out / "tensorboard", resume_step))


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete records of a metrics file (a torn last line from a kill is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records with step <= last_step (atomically)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)   # "nan" / "inf": strict JSON, still visible
    return value
