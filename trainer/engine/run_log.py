"""train.log: rank 0's plain-text lines of a run, timestamped (like open_clip's out.log).

`open_run_log(out_dir)` (rank 0, at the start of a run) appends to OUT/train.log from then on: the
lines given to `log_line` (start/resume, periodic progress off a terminal, the final summary) and
the warnings of the project's loggers (trainer, shards, cluster), which also still reach stderr.
Without an open log, `log_line` only prints.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

TRAIN_LOG = "train.log"
LOGGERS = ("trainer", "shards", "cluster")

_state: dict = {"file": None, "handlers": []}


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class _FileHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _write(f"{record.levelname.lower()}: {record.getMessage()}")


def open_run_log(out_dir: str | Path) -> Path:
    """Start appending to OUT/train.log; the project's warnings go there and to stderr."""
    close_run_log()
    path = Path(out_dir) / TRAIN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    _state["file"] = open(path, "a", buffering=1)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in (_FileHandler(logging.WARNING), console):
            handler.setLevel(logging.WARNING)
            logger.addHandler(handler)
            _state["handlers"].append((logger, handler))
    return path


def close_run_log() -> None:
    for logger, handler in _state["handlers"]:
        logger.removeHandler(handler)
    _state["handlers"] = []
    if _state["file"] is not None:
        _state["file"].close()
        _state["file"] = None


def log_line(line: str, stream=None) -> None:
    """Print `line` (stderr by default) and append it to train.log when one is open."""
    print(line, file=stream or sys.stderr, flush=True)
    _write(line)


def _write(line: str) -> None:
    handle = _state["file"]
    if handle is not None:
        handle.write(f"{_stamp()} {line}\n")
