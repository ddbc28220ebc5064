"""Check every shard of a sharded split: committed, readable, counts consistent, samples decodable.

For each shard of the plan (manifest.parquet; without one, every `{split}-NNNNNN.tar` found):
- the stats file exists (the shard is committed) and the tar's size and sha256 match it;
- the Parquet record lists exactly the plan's rows of that shard, and its ok/failed counts match
  the stats file;
- the tar holds exactly the ok rows' samples, in row order, with safe keys and the members the
  format prescribes; every sample decodes: json with all fields, fbank float16 [T, 128] with
  T == fbank_frames, N RGB JPEG frames of one square size.
Problems are reported by shard and sample key.
"""
from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards import format as fmt


@dataclass(frozen=True)
class Problem:
    shard: str
    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.shard}{' [' + self.key + ']' if self.key else ''}: {self.message}"


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _ShardCheck:
    out_dir: str
    split: str
    index: int
    plan_rows: tuple[tuple[int, str], ...] | None
    frame_size: int | None


def _plan(out_dir: Path) -> tuple[str, dict[int, list[tuple[int, str]]], int | None] | None:
    path = out_dir / fmt.MANIFEST_NAME
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["row", "key", "shard", "split"])
    meta = json.loads((pq.read_schema(path).metadata or {}).get(b"avsiam.plan", b"{}"))
    by_shard: dict[int, list[tuple[int, str]]] = {}
    for row, key, shard in zip(*(table.column(c).to_pylist() for c in ("row", "key", "shard"))):
        by_shard.setdefault(shard, []).append((row, key))
    split = table.column("split")[0].as_py() if table.num_rows else "train"
    return split, by_shard, (meta.get("clip_params") or {}).get("frame_size")


def verify_dataset(out_dir: str | Path, workers: int = 1) -> VerifyReport:
    """Verify every shard under `out_dir`."""
    out_dir = Path(out_dir)
    plan = _plan(out_dir)
    if plan is not None:
        split, by_shard, frame_size = plan
        checks = [_ShardCheck(str(out_dir), split, k, tuple(rows), frame_size)
                  for k, rows in sorted(by_shard.items())]
    else:
        checks = []
        for tar in sorted(out_dir.glob("*.tar")):
            match = fmt.SHARD_NAME_RE.match(tar.name)
            if match:
                checks.append(_ShardCheck(str(out_dir), match["split"], int(match["index"]),
                                          None, None))
    report = VerifyReport(shards=len(checks))
    if plan is None and not checks:
        report.problems.append(Problem(str(out_dir), None, "no manifest.parquet and no shards"))
        return report
    if workers > 1 and len(checks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(verify_shard, checks))
    else:
        results = [verify_shard(check) for check in checks]
    for rows, samples, problems in results:
        report.rows += rows
        report.samples += samples
        report.problems.extend(problems)
    return report


def verify_shard(check: _ShardCheck) -> tuple[int, int, list[Problem]]:
    """(rows, samples, problems) of one shard."""
    files = fmt.ShardFiles.of(check.out_dir, check.split, check.index)
    stem = fmt.shard_stem(check.split, check.index)
    problems: list[Problem] = []

    def problem(message: str, key: str | None = None) -> None:
        problems.append(Problem(stem, key, message))

    if not files.stats.exists():
        problem("not committed (no stats file): re-run `avsiam shard` to finish it")
        return 0, 0, problems
    try:
        stats = json.loads(files.stats.read_text())
    except (OSError, ValueError) as exc:
        problem(f"stats file unreadable: {exc}")
        return 0, 0, problems
    missing = [name for name in fmt.STATS_FIELDS if name not in stats]
    if missing:
        problem(f"stats file lacks {missing}")
    records = _check_record(files, check, stats, problem)
    if records is None:
        return 0, 0, problems
    ok_rows = [r for r in records if r["status"] == fmt.STATUS_OK]
    samples = _check_tar(files, stats, ok_rows, check.frame_size, problem)
    return len(records), samples, problems


def _check_record(files: fmt.ShardFiles, check: _ShardCheck, stats: dict, problem):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(files.record)
    except Exception as exc:
        problem(f"record {files.record.name} unreadable: {exc}")
        return None
    if tuple(table.column_names) != fmt.RECORD_COLUMNS:
        problem(f"record columns {table.column_names} != {list(fmt.RECORD_COLUMNS)}")
        return None
    records = table.to_pylist()
    if check.plan_rows is not None and [(r["row"], r["key"]) for r in records] != \
            list(check.plan_rows):
        problem(f"record has {len(records)} rows that differ from the plan's "
                f"{len(check.plan_rows)} rows of this shard (lost or extra rows)")
    for r in records:
        if r["status"] not in (fmt.STATUS_OK, fmt.STATUS_FAILED):
            problem(f"row {r['row']}: unknown status {r['status']!r}", r["key"])
        elif r["status"] == fmt.STATUS_FAILED and not r["reason"]:
            problem(f"row {r['row']}: failed without a reason", r["key"])
    ok = sum(r["status"] == fmt.STATUS_OK for r in records)
    for name, value in (("rows", len(records)), ("ok", ok), ("failed", len(records) - ok)):
        if stats.get(name) != value:
            problem(f"stats file says {name}={stats.get(name)}, record has {value}")
    return records


def _check_tar(files: fmt.ShardFiles, stats: dict, ok_rows: list[dict], frame_size, problem) -> int:
    try:
        size, digest = fmt.file_digest(files.tar)
    except OSError as exc:
        problem(f"tar unreadable: {exc}")
        return 0
    if stats.get("tar_bytes") not in (None, size):
        problem(f"tar has {size} bytes, stats file says {stats['tar_bytes']}")
    if stats.get("tar_sha256") not in (None, digest):
        problem("tar sha256 differs from the stats file (changed after commit)")
    by_key = {r["key"]: r for r in ok_rows}
    keys: list[str] = []
    try:
        with tarfile.open(files.tar, mode="r|") as tar:
            for key, members in _samples(tar, problem):
                if key in keys:
                    problem("members of this sample are not contiguous (duplicate key)", key)
                keys.append(key)
                _check_sample(key, members, by_key.get(key), frame_size, problem)
    except (tarfile.TarError, EOFError, OSError) as exc:
        problem(f"tar unreadable after {len(keys)} samples: {exc}")
    expected = [r["key"] for r in ok_rows]
    if keys != expected:
        missing = sorted(set(expected) - set(keys))[:5]
        extra = sorted(set(keys) - set(expected))[:5]
        problem(f"tar samples differ from the record's ok rows ({len(keys)} vs {len(expected)}; "
                f"missing {missing}, unexpected {extra})")
    if stats.get("samples") not in (None, len(keys)):
        problem(f"tar has {len(keys)} samples, stats file says {stats['samples']}")
    return len(keys)


def _samples(tar: tarfile.TarFile, problem):
    """(key, {suffix: bytes}) of each run of members sharing a key, streaming."""
    key, members = None, {}
    for member in tar:
        name_key, suffix = fmt.split_member(member.name)
        if not member.isfile() or suffix is None or not fmt.is_safe_key(name_key):
            problem(f"unsafe or malformed member {member.name!r}", name_key or None)
            continue
        if name_key != key:
            if key is not None:
                yield key, members
            key, members = name_key, {}
        members[suffix] = tar.extractfile(member).read()
    if key is not None:
        yield key, members


def _check_sample(key: str, members: dict[str, bytes], record: dict | None, frame_size,
                  problem) -> None:
    try:
        meta = json.loads(members[fmt.META_SUFFIX])
    except (KeyError, ValueError) as exc:
        problem(f"json missing or invalid ({exc})", key)
        return
    missing = [f for f in fmt.META_FIELDS if f not in meta]
    if missing:
        problem(f"json lacks {missing}", key)
        return
    if meta["key"] != key:
        problem(f"json key {meta['key']!r} differs from the member key", key)
    wanted = fmt.member_suffixes(meta["num_frames"], meta["has_audio"], meta["has_video"])
    if list(members) != wanted:
        problem(f"members {list(members)} != expected {wanted}", key)
    if record is not None and (record["has_audio"], record["has_video"]) != \
            (meta["has_audio"], meta["has_video"]):
        problem("has_audio/has_video differ between json and record", key)
    if fmt.FBANK_SUFFIX in members:
        try:
            bank = np.load(io.BytesIO(members[fmt.FBANK_SUFFIX]), allow_pickle=False)
        except (ValueError, OSError) as exc:
            problem(f"fbank does not decode: {exc}", key)
        else:
            if bank.dtype != np.dtype(fmt.FBANK_DTYPE) or bank.ndim != 2 or \
                    bank.shape[1] != fmt.NUM_MEL_BINS or bank.shape[0] != meta["fbank_frames"]:
                problem(f"fbank {bank.dtype} {list(bank.shape)} != {fmt.FBANK_DTYPE} "
                        f"[{meta['fbank_frames']}, {fmt.NUM_MEL_BINS}]", key)
            elif not np.isfinite(bank).all():
                problem("fbank holds non-finite values", key)
    _check_frames(key, members, frame_size, problem)


def _check_frames(key: str, members: dict[str, bytes], frame_size, problem) -> None:
    from PIL import Image

    sizes = set()
    for suffix, data in members.items():
        if not fmt.FRAME_SUFFIX_RE.match(suffix):
            continue
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                sizes.add((image.mode, image.size))
        except Exception as exc:
            problem(f"{suffix} does not decode: {exc}", key)
    for mode, (width, height) in sizes:
        if mode != "RGB" or width != height or (frame_size and width != frame_size):
            problem(f"frame is {mode} {width}x{height}, expected RGB square "
                    f"{frame_size or ''}".rstrip(), key)
