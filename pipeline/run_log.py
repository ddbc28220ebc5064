"""Metrics of a sharding run: one JSON line per committed shard plus a summary (OUT/logs/).

Timings and memory live here, never in the shard files, so those stay byte-identical across runs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


class RunLog:
    def __init__(self, out_dir: Path, task_index: int, num_tasks: int):
        folder = Path(out_dir) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"shard-task{task_index:04d}-of-{num_tasks:04d}.jsonl"
        self._handle = open(self.path, "a", buffering=1)
        self.started = time.time()

    def write(self, event: str, **values) -> None:
        record = {"event": event, "time": round(time.time(), 3),
                  "elapsed_s": round(time.time() - self.started, 3), **values}
        self._handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._handle.close()
