"""Write one shard deterministically and commit it atomically; only the holder of the shard's lock
does either.

Results arrive in any order; the writer puts samples into the tar in plan-row order, with fixed
member order and fixed headers (mtime 0, uid/gid 0, no owner names, mode 0644), so the same input
gives the same bytes whatever the number of workers. Commit: tar and record are written under
temporary names unique to this writer (`pipeline.output_files`), fsynced and renamed; the stats
file is renamed into place LAST and marks the shard committed. A shard is committed only if its
stats file reads back whole and its tar and record are there with the recorded size
(`committed_stats`); any other shard is partial and is redone from scratch.
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
from pipeline.locks import FileLock
from pipeline.output_files import fsync_dir, remove_temps, temp_path, write_atomic, writing
from pipeline.params import PIPELINE_VERSION
from pipeline.stats import Moments, sample_moments
from shards import format as fmt

RECORD_SCHEMA = pa.schema([("row", pa.int64()), ("key", pa.string()), ("source_id", pa.string()),
                           ("path", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                           ("has_audio", pa.bool_()), ("has_video", pa.bool_()),
                           ("coverage", pa.float64()), ("window_source", pa.string())])
assert tuple(RECORD_SCHEMA.names) == fmt.RECORD_COLUMNS


def shard_names(files: fmt.ShardFiles) -> set[str]:
    return {files.tar.name, files.record.name, files.stats.name}


def committed_stats(files: fmt.ShardFiles, identity: dict | None = None) -> dict | None:
    """The stats of a committed shard, or None when the shard is not committed: no stats file, one
    that does not parse (0 bytes, cut off) or lacks fields, another plan's (`identity`), or a tar
    or record that is missing or whose size is not the recorded one (deleted, truncated or
    replaced after the commit)."""
    try:
        stats = json.loads(files.stats.read_bytes())
        if not isinstance(stats, dict) or not set(fmt.STATS_FIELDS) <= set(stats):
            return None
        if identity and any(stats[k] != v for k, v in identity.items()):
            return None
        if files.tar.stat().st_size != stats["tar_bytes"] or files.record.stat().st_size == 0:
            return None
    except (OSError, ValueError, TypeError):
        return None
    return stats


def remove_leftovers(files: fmt.ShardFiles) -> None:
    """Delete a partial shard's files and every writer's temporary files of it; the caller holds
    the shard's lock (so no live writer owns them)."""
    with writing(files.stats):
        files.stats.unlink(missing_ok=True)
        for path in (files.tar, files.record):
            path.unlink(missing_ok=True)
        remove_temps(files.tar.parent, shard_names(files))


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
    """Collects the results of one shard's rows and writes them in row order; `lock` is the
    shard's lock, held by this process from before the writer opens until after it commits."""

    def __init__(self, files: fmt.ShardFiles, shard: int, rows: list[tuple[int, str]],
                 identity: dict, lock: FileLock, reuse: dict[int, Reused] | None = None):
        lock.check()
        self.files, self.shard, self.identity, self.lock = files, shard, identity, lock
        self._rows = rows                              # (row, key) in plan order
        self._pending: dict[int, ClipResult | Reused] = dict(reuse or {})
        self._next = 0
        self._old = tarfile.open(files.tar, "r") if reuse else None
        self._old_members = iter(self._old) if self._old else None
        self._temp = temp_path(files.tar)
        with writing(files.tar):
            self._raw = open(self._temp, "xb")
        self._hashing = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        self._records: list[dict] = []
        self._moments = Moments()
        self._failures: Counter = Counter()
        try:
            self._flush()
        except BaseException:
            self.abort()
            raise

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
        with writing(self.files.tar):       # a full disk: one line naming the shard
            self._write_ready()

    def _write_ready(self) -> None:
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
            key, suffix = fmt.split_member(member.name)
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
        """Finish the tar, write the record, then the stats file (the commit marker). Only while
        this process still holds the shard's lock."""
        assert self.complete, "commit() before every row arrived"
        with writing(self.files.tar):
            self._tar.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        if self._old is not None:
            self._old.close()
        self.lock.check()
        with writing(self.files.tar):
            os.replace(self._temp, self.files.tar)
        record = pa.Table.from_pylist(self._records, schema=RECORD_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(record, sink)
        write_atomic(self.files.record, sink.getvalue().to_pybytes())
        stats = self._stats()
        write_atomic(self.files.stats, (json.dumps(stats, indent=1) + "\n").encode())
        fsync_dir(self.files.stats.parent)
        return stats

    def abort(self) -> None:
        """Close everything and delete this writer's temporary tar (frees the space at once; the
        shard stays uncommitted and is redone by the next run)."""
        for handle in (self._raw, self._old):
            try:
                if handle is not None:
                    handle.close()
            except (OSError, ValueError):
                pass
        self._temp.unlink(missing_ok=True)

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


def identity(split: str, plan_hash: str, params_hash: str) -> dict:
    """The fields every stats file starts with."""
    return {"format_version": fmt.FORMAT_VERSION, "pipeline_version": PIPELINE_VERSION,
            "split": split, "plan_hash": plan_hash, "params_hash": params_hash}
