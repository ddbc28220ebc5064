"""Write one shard deterministically and commit it atomically.

Results arrive in any order; the writer puts samples into the tar in plan-row order, with fixed
member order and fixed headers (mtime 0, uid/gid 0, no owner names, mode 0644), so the same input
gives the same bytes whatever the number of workers. Commit: tar and record are written under
temporary names, fsynced and renamed; the stats file is renamed into place LAST and marks the shard
committed. A shard without its stats file is partial and is redone from scratch.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.clip import ClipResult
from pipeline.errors import reason_code
from pipeline.params import PIPELINE_VERSION
from pipeline.stats import Moments, sample_moments
from shards import format as fmt

_TEMP = ".tmp"
RECORD_SCHEMA = pa.schema([("row", pa.int64()), ("key", pa.string()), ("source_id", pa.string()),
                           ("path", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                           ("has_audio", pa.bool_()), ("has_video", pa.bool_()),
                           ("coverage", pa.float64()), ("window_source", pa.string())])
assert tuple(RECORD_SCHEMA.names) == fmt.RECORD_COLUMNS


def temp_path(path: Path) -> Path:
    return path.with_name(path.name + _TEMP)


def is_committed(files: fmt.ShardFiles) -> bool:
    return files.stats.exists()


def remove_leftovers(files: fmt.ShardFiles) -> None:
    """Delete a partial shard's files (the stats file must already be absent)."""
    for path in (files.tar, files.record, temp_path(files.tar), temp_path(files.record),
                 temp_path(files.stats)):
        path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    temp = temp_path(path)
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through."""

    def __init__(self, handle):
        self._handle = handle
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:
        self._handle.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


@dataclass(frozen=True)
class Reused:
    """A row kept from the previous version of the shard (--retry-failed)."""

    row: int
    key: str
    source_id: str
    path: str | None
    has_audio: bool
    has_video: bool
    coverage: float | None = None
    window_source: str | None = None


class ShardWriter:
    """Collects the results of one shard's rows and writes them in row order."""

    def __init__(self, files: fmt.ShardFiles, shard: int, rows: list[tuple[int, str]],
                 identity: dict, reuse: dict[int, Reused] | None = None):
        self.files, self.shard, self.identity = files, shard, identity
        self._rows = rows                              # (row, key) in plan order
        self._pending: dict[int, ClipResult | Reused] = dict(reuse or {})
        self._next = 0
        self._old = tarfile.open(files.tar, "r") if reuse else None
        self._old_members = iter(self._old) if self._old else None
        self._raw = open(temp_path(files.tar), "wb")
        self._hashing = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        self._records: list[dict] = []
        self._moments = Moments()
        self._failures: Counter = Counter()
        self._flush()

    @property
    def complete(self) -> bool:
        return self._next == len(self._rows)

    @property
    def waiting(self) -> int:
        """Decoded results held until the rows before them arrive."""
        return sum(not isinstance(item, Reused) for item in self._pending.values())

    def add(self, result: ClipResult) -> None:
        """Take one result; writes every sample whose turn has come."""
        self._pending[result.row] = result
        self._flush()

    def _flush(self) -> None:
        while self._next < len(self._rows) and self._rows[self._next][0] in self._pending:
            row, key = self._rows[self._next]
            item = self._pending.pop(row)
            if item.key != key:
                raise RuntimeError(f"row {row}: result key {item.key!r} != plan key {key!r}")
            if isinstance(item, Reused):
                self._copy_old(item)
            else:
                self._write(item)
            self._next += 1

    def _write(self, result: ClipResult) -> None:
        for suffix, data in result.members:
            self._tar.addfile(_member_info(f"{result.key}.{suffix}", len(data)), io.BytesIO(data))
        if result.status == fmt.STATUS_OK:
            self._moments = self._moments.combine(result.moments)
        else:
            self._failures[reason_code(result.reason)] += 1
        self._records.append(dict(row=result.row, key=result.key, source_id=result.source_id,
                                  path=result.path, status=result.status, reason=result.reason,
                                  has_audio=result.has_audio, has_video=result.has_video,
                                  coverage=result.coverage, window_source=result.window_source))

    def _copy_old(self, item: Reused) -> None:
        """Copy a kept sample's members from the old tar (which holds samples in row order)."""
        for member in self._old_members:
            key, _, suffix = member.name.partition(".")
            if key != item.key:
                continue
            data = self._old.extractfile(member).read()
            self._tar.addfile(_member_info(member.name, len(data)), io.BytesIO(data))
            if suffix == fmt.FBANK_SUFFIX:
                self._moments = self._moments.combine(
                    sample_moments(np.load(io.BytesIO(data), allow_pickle=False)))
            if suffix == fmt.META_SUFFIX:
                break
        else:
            raise RuntimeError(f"{self.files.tar}: kept sample {item.key!r} is not in the old "
                               f"tar")
        self._records.append(dict(row=item.row, key=item.key, source_id=item.source_id,
                                  path=item.path, status=fmt.STATUS_OK, reason=None,
                                  has_audio=item.has_audio, has_video=item.has_video,
                                  coverage=item.coverage, window_source=item.window_source))

    def commit(self) -> dict:
        """Finish the tar, write the record, then the stats file (the commit marker)."""
        assert self.complete, "commit() before every row arrived"
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        if self._old is not None:
            self._old.close()
        os.replace(temp_path(self.files.tar), self.files.tar)
        record = pa.Table.from_pylist(self._records, schema=RECORD_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(record, sink)
        _write_atomic(self.files.record, sink.getvalue().to_pybytes())
        stats = self._stats()
        _write_atomic(self.files.stats, (json.dumps(stats, indent=1) + "\n").encode())
        fsync_dir(self.files.stats.parent)
        return stats

    def abort(self) -> None:
        for handle in (self._tar, self._raw, self._old):
            try:
                if handle is not None:
                    handle.close()
            except (OSError, ValueError):
                pass

    def _stats(self) -> dict:
        ok = [r for r in self._records if r["status"] == fmt.STATUS_OK]
        stats = {
            **self.identity,
            "shard": self.shard,
            "tar": self.files.tar.name,
            "rows": len(self._records),
            "ok": len(ok),
            "failed": len(self._records) - len(ok),
            "samples": len(ok),
            "with_audio": sum(r["has_audio"] for r in ok),
            "with_video": sum(r["has_video"] for r in ok),
            "failures": dict(sorted(self._failures.items())),
            "tar_bytes": self._hashing.size,
            "tar_sha256": self._hashing.sha.hexdigest(),
            "fbank": self._moments.as_dict(),
        }
        assert tuple(stats) == fmt.STATS_FIELDS, "stats fields drifted from shards.format"
        return stats


def read_stats(files: fmt.ShardFiles) -> dict:
    return json.loads(files.stats.read_text())


def identity(split: str, plan_hash: str, params_hash: str) -> dict:
    """The fields every stats file starts with."""
    return {"format_version": fmt.FORMAT_VERSION, "pipeline_version": PIPELINE_VERSION,
            "split": split, "plan_hash": plan_hash, "params_hash": params_hash}
