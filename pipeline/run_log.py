"""Metrics of a sharding run: one JSON line per committed shard plus a summary (OUT/logs/).

Timings and memory live here, never in the shard files, so those stay byte-identical across runs.
Every line carries the writing process's pid (concurrent runs of one task share the file). A log
line that cannot be written (a full disk) is reported once on stderr and does not stop the job
(logging stops there): the shard writes report the disk themselves.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


class RunLog:
    def __init__(self, out_dir: Path, task_index: int, num_tasks: int):
        folder = Path(out_dir) / "logs"
        self.path = folder / f"shard-task{task_index:04d}-of-{num_tasks:04d}.jsonl"
        self.started = time.time()
        self._handle = None
        self._failed = False
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", buffering=1)
        except OSError as exc:
            self._warn(exc)

    def write(self, event: str, **values) -> None:
        if self._handle is None:
            return
        record = {"event": event, "time": round(time.time(), 3),
                  "elapsed_s": round(time.time() - self.started, 3), "pid": os.getpid(),
                  **values}
        try:
            self._handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            self._warn(exc)
            self._drop()

    def _drop(self) -> None:
        """Stop logging after a failed write (the rest of a half-written line must not follow)."""
        handle, self._handle = self._handle, None
        try:
            handle.close()
        except OSError:
            pass

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as exc:
                self._warn(exc)
            self._handle = None

    def _warn(self, exc: OSError) -> None:
        if not self._failed:
            self._failed = True
            print(f"avsiam shard: warning: cannot write the run log {self.path} "
                  f"({exc.strerror or exc}); metrics of this run are incomplete", file=sys.stderr)
