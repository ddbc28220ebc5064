"""Check every shard of a sharded split: committed, readable, counts consistent, samples decodable.

For each shard of the plan (manifest.parquet; without one, every `{split}-NNNNNN.tar` found):
- the stats file exists (the shard is committed) and the tar's size and sha256 match it;
- the Parquet record lists exactly the plan's rows of that shard, and its ok/failed counts match
  the stats file;
- the tar holds exactly the ok rows' samples, in row order, with safe keys and the members the
  format prescribes; every sample decodes: json with all fields, fbank float16 [T, 128] with
  T == fbank_frames, N RGB JPEG frames of one square size.
dataset.json, when present, must be an object whose facts a loader accepts and whose shard list
names plain shard files of the folder only (never a path that leaves it).
Problems are reported by shard and sample key.

Hostile files are checked with the loader's own guards (shards.files, tarscan, npy, decode): only
regular files are opened, metadata is read up to a bound, tar headers are checked strictly, the
members of one sample may claim at most `max_sample_bytes` together (a larger sample is reported
and never read), npy headers and JPEG frame sizes are checked before anything is allocated, and any
failure to decode is a problem reported, never an exception.
"""
from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards import format as fmt

from .dataset_facts import FACTS, read_dataset_facts
from .decode import MAX_FRAME_PIXELS, jpeg_dimensions
from .errors import BadSample
from .files import MetadataError, is_regular, read_json_object
from .npy import all_finite, load_array
from .records import (MAX_MANIFEST_BYTES, MAX_MANIFEST_ROWS, MAX_RECORD_BYTES, MAX_RECORD_ROWS,
                      read_columns)
from .sources import MAX_SHARDS, expand_pattern, plain_shard_name
from .tarscan import READ, REFUSE, tar_file_members

MAX_STATS_BYTES = 1 << 20


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
    max_sample_bytes: int = fmt.MAX_SAMPLE_BYTES


def _plan(out_dir: Path) -> tuple[str, dict[int, list[tuple[int, str]]], int | None] | None:
    path = out_dir / fmt.MANIFEST_NAME
    if not os.path.lexists(path):
        return None
    table = read_columns(path, ["row", "key", "shard", "split"], max_rows=MAX_MANIFEST_ROWS,
                         max_bytes=MAX_MANIFEST_BYTES)
    try:
        meta = json.loads((table.schema.metadata or {}).get(b"avsiam.plan", b"{}"))
        frame_size = (meta.get("clip_params") or {}).get("frame_size")
        by_shard: dict[int, list[tuple[int, str]]] = {}
        for row, key, shard in zip(*(table.column(c).to_pylist() for c in ("row", "key", "shard"))):
            by_shard.setdefault(int(shard), []).append((row, key))
        split = table.column("split")[0].as_py() if table.num_rows else "train"
    except Exception as e:  # noqa: BLE001 - a damaged plan is a problem to report
        raise MetadataError(f"{path} is not a plan written by `avsiam shard` ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None
    if not isinstance(split, str) or not fmt.SHARD_NAME_RE.match(fmt.shard_stem(split, 0) + ".tar") \
            or len(by_shard) > MAX_SHARDS or any(not 0 <= k < 10 ** fmt.SHARD_DIGITS for k in by_shard):
        raise MetadataError(f"{path}: split {split!r} or shard numbers are not a plan's")
    return split, by_shard, frame_size if type(frame_size) is int else None


def verify_dataset(out_dir: str | Path, workers: int = 1,
                   max_sample_bytes: int = fmt.MAX_SAMPLE_BYTES) -> VerifyReport:
    """Verify every shard under `out_dir`."""
    out_dir = Path(out_dir)
    report = VerifyReport()
    try:
        plan = _plan(out_dir)
    except MetadataError as exc:
        report.problems.append(Problem(fmt.MANIFEST_NAME, None, str(exc)))
        return report
    if plan is not None:
        split, by_shard, frame_size = plan
        checks = [_ShardCheck(str(out_dir), split, k, tuple(rows), frame_size, max_sample_bytes)
                  for k, rows in sorted(by_shard.items())]
    else:
        checks = []
        for tar in sorted(out_dir.glob("*.tar")):
            match = fmt.SHARD_NAME_RE.match(tar.name)
            if match:
                checks.append(_ShardCheck(str(out_dir), match["split"], int(match["index"]),
                                          None, None, max_sample_bytes))
    report.shards = len(checks)
    report.problems.extend(_check_dataset_json(out_dir, checks))
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


def _check_dataset_json(out_dir: Path, checks: list[_ShardCheck]) -> list[Problem]:
    """dataset.json: an object with facts a loader accepts and a shard list inside the folder."""
    path = out_dir / fmt.DATASET_JSON
    if not os.path.lexists(path):
        return []
    problems: list[Problem] = []
    try:
        data = read_json_object(path, 64 << 20)
        # every fact a loader may take, as it checks them (frame_size aside: above the default
        # image size's bound it is only refused as a default, and the frames are checked below)
        read_dataset_facts(str(out_dir), set(FACTS) - {"frame_size"}, data)
        listed = data.get("shards")
        if listed is not None:
            entries = expand_pattern(listed) if isinstance(listed, str) else listed
            if not isinstance(entries, list) and not isinstance(listed, str):
                raise MetadataError(f"{path}: \"shards\" is neither a brace pattern nor a list")
            names = {plain_shard_name(str(out_dir), entry) for entry in entries}
            planned = {fmt.shard_stem(c.split, c.index) + ".tar" for c in checks}
            if planned and names != planned:
                problems.append(Problem(fmt.DATASET_JSON, None, f"lists {len(names)} shards, the "
                                        f"plan has {len(planned)}; rewrite it with `avsiam shard`"))
    except ValueError as exc:                    # MetadataError, a shard name that is not plain
        problems.append(Problem(fmt.DATASET_JSON, None, str(exc)))
    return problems


def verify_shard(check: _ShardCheck) -> tuple[int, int, list[Problem]]:
    """(rows, samples, problems) of one shard."""
    files = fmt.ShardFiles.of(check.out_dir, check.split, check.index)
    stem = fmt.shard_stem(check.split, check.index)
    problems: list[Problem] = []

    def problem(message: str, key: str | None = None) -> None:
        problems.append(Problem(stem, key, message))

    if not os.path.lexists(files.stats):
        problem("not committed (no stats file): re-run `avsiam shard` to finish it")
        return 0, 0, problems
    try:
        stats = read_json_object(files.stats, MAX_STATS_BYTES)
    except MetadataError as exc:
        problem(f"stats file unreadable: {exc}")
        return 0, 0, problems
    missing = [name for name in fmt.STATS_FIELDS if name not in stats]
    if missing:
        problem(f"stats file lacks {missing}")
    records = _check_record(files, check, stats, problem)
    if records is None:
        return 0, 0, problems
    ok_rows = [r for r in records if r["status"] == fmt.STATUS_OK]
    samples = _check_tar(files, stats, ok_rows, check, problem)
    return len(records), samples, problems


def _check_record(files: fmt.ShardFiles, check: _ShardCheck, stats: dict, problem):
    try:
        table = read_columns(files.record, None, max_rows=MAX_RECORD_ROWS,
                             max_bytes=MAX_RECORD_BYTES)
    except MetadataError as exc:
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
            problem(f"row {r['row']}: unknown status {str(r['status'])[:40]!r}", _shown(r["key"]))
        elif r["status"] == fmt.STATUS_FAILED and not r["reason"]:
            problem(f"row {r['row']}: failed without a reason", _shown(r["key"]))
    ok = sum(r["status"] == fmt.STATUS_OK for r in records)
    for name, value in (("rows", len(records)), ("ok", ok), ("failed", len(records) - ok)):
        if stats.get(name) != value:
            problem(f"stats file says {name}={str(stats.get(name))[:40]}, record has {value}")
    return records


def _check_tar(files: fmt.ShardFiles, stats: dict, ok_rows: list[dict], check: _ShardCheck,
               problem) -> int:
    if not is_regular(files.tar):
        problem(f"tar {files.tar.name} is missing or not a regular file")
        return 0
    try:
        size, digest = fmt.file_digest(files.tar)
    except OSError as exc:
        problem(f"tar unreadable: {exc}")
        return 0
    if stats.get("tar_bytes") not in (None, size):
        problem(f"tar has {size} bytes, stats file says {str(stats['tar_bytes'])[:40]}")
    if stats.get("tar_sha256") not in (None, digest):
        problem("tar sha256 differs from the stats file (changed after commit)")
    by_key = {r["key"]: r for r in ok_rows}
    keys: list[str] = []
    seen: set[str] = set()
    try:
        for key, members, oversized in _samples(files.tar, check.max_sample_bytes, problem):
            if key in seen:
                problem("members of this sample are not contiguous (duplicate key)", key)
            keys.append(key)
            seen.add(key)
            if oversized:
                problem(f"its members claim more than {check.max_sample_bytes} bytes together "
                        "(never read; --max-sample-bytes)", key)
            else:
                _check_sample(key, members, by_key.get(key), check.frame_size, problem)
    except Exception as exc:  # noqa: BLE001 - tarscan's ReadError, OSError, ...
        problem(f"tar unreadable after {len(keys)} samples: {type(exc).__name__}: {exc}")
    expected = [r["key"] for r in ok_rows]
    if keys != expected:
        missing = sorted(set(expected) - seen)[:5]
        extra = sorted(seen - set(expected))[:5]
        problem(f"tar samples differ from the record's ok rows ({len(keys)} vs {len(expected)}; "
                f"missing {missing}, unexpected {extra})")
    if stats.get("samples") not in (None, len(keys)):
        problem(f"tar has {len(keys)} samples, stats file says {str(stats['samples'])[:40]}")
    return len(keys)


class _Budget:
    """tarscan `keep` of verify: every regular member is reported (format members of a safe key
    with their bytes, others without); once a key's members claim more than `budget` bytes
    together, none of its further members is read and the key is noted as oversized."""

    def __init__(self, budget: int):
        self.budget = budget
        self.key: str | None = None
        self.claimed = 0
        self.oversized: set[str] = set()

    def __call__(self, name: str, size: int) -> int:
        key, suffix = fmt.split_member(name)
        if key != self.key:
            self.key, self.claimed = key, 0
        self.claimed += size
        if self.claimed > self.budget:
            self.oversized.add(key)
            return REFUSE
        return READ if fmt.is_format_suffix(suffix) and fmt.is_safe_key(key) else REFUSE


def _samples(tar: Path, budget: int, problem):
    """(key, {suffix: bytes or None if not read}, oversized) of each run of members sharing a key."""
    keep = _Budget(budget)
    key, members = None, {}

    def special(name: str, kind: bytes) -> None:
        problem(f"unsafe or malformed member {name[:200]!r} (tar type {kind.decode()!r}: a link, "
                "device, directory or FIFO)", _shown(fmt.split_member(name)[0]))

    for name, data in tar_file_members(str(tar), keep, special):
        name_key, suffix = fmt.split_member(name)
        if suffix is None or not fmt.is_safe_key(name_key):
            problem(f"unsafe or malformed member {name[:200]!r}", _shown(name_key))
            continue
        if name_key != key:
            if key is not None:
                yield key, members, key in keep.oversized
            key, members = name_key, {}
        members[suffix] = data
    if key is not None:
        yield key, members, key in keep.oversized


def _check_sample(key: str, members: dict[str, bytes | None], record: dict | None, frame_size,
                  problem) -> None:
    meta = _meta(members.get(fmt.META_SUFFIX), key, problem)
    if meta is None:
        return
    if meta["key"] != key:
        problem(f"json key {str(meta['key'])[:140]!r} differs from the member key", key)
    wanted = fmt.member_suffixes(meta["num_frames"], meta["has_audio"], meta["has_video"])
    if list(members) != wanted:
        shown = list(members)[:20]
        problem(f"members {shown}{'...' if len(members) > 20 else ''} != expected "
                f"{wanted[:20]}{'...' if len(wanted) > 20 else ''}", key)
    if record is not None and (record["has_audio"], record["has_video"]) != \
            (meta["has_audio"], meta["has_video"]):
        problem("has_audio/has_video differ between json and record", key)
    if members.get(fmt.FBANK_SUFFIX) is not None:
        _check_fbank(key, members[fmt.FBANK_SUFFIX], meta["fbank_frames"], problem)
    _check_frames(key, members, frame_size, problem)


_META_TYPES = {"key": str, "num_frames": int, "fbank_frames": int, "has_audio": bool,
               "has_video": bool}


def _meta(data: bytes | None, key: str, problem) -> dict | None:
    """The sample's json if it is an object with every field, of the types verify relies on."""
    if data is None or len(data) > fmt.MAX_META_BYTES:
        problem(f"json missing or larger than {fmt.MAX_META_BYTES} bytes", key)
        return None
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as exc:     # RecursionError: nesting too deep
        problem(f"json missing or invalid ({type(exc).__name__}: {str(exc)[:200]})", key)
        return None
    if not isinstance(meta, dict):
        problem("json is not an object", key)
        return None
    missing = [f for f in fmt.META_FIELDS if f not in meta and f not in fmt.OPTIONAL_META_FIELDS]
    if missing:
        problem(f"json lacks {missing}", key)
        return None
    wrong = [name for name, kind in _META_TYPES.items() if type(meta[name]) is not kind]
    wrong += [name for name, high in (("num_frames", fmt.MAX_FRAMES), ("fbank_frames", None))
              if name not in wrong and not 0 <= meta[name] <= (high or meta[name])]
    if wrong:
        problem(f"json fields {wrong} have wrong types or values (num_frames at most "
                f"{fmt.MAX_FRAMES}, fbank_frames at least 0)", key)
        return None
    return meta


def _check_fbank(key: str, data: bytes, frames: int, problem) -> None:
    try:
        bank = load_array(data, fmt.FBANK_SUFFIX)       # header checked before anything loads
    except BadSample as exc:
        problem(f"fbank does not decode: {exc}", key)
        return
    if bank.dtype != np.dtype(fmt.FBANK_DTYPE) or bank.ndim != 2 or \
            bank.shape[1] != fmt.NUM_MEL_BINS or bank.shape[0] != frames:
        problem(f"fbank {bank.dtype} {list(bank.shape)} != {fmt.FBANK_DTYPE} "
                f"[{frames}, {fmt.NUM_MEL_BINS}]", key)
    elif not all_finite(bank):
        problem("fbank holds non-finite values", key)


def _check_frames(key: str, members: dict[str, bytes | None], frame_size, problem) -> None:
    from PIL import Image

    sizes = set()
    for suffix, data in members.items():
        if data is None or fmt.frame_number(suffix) is None:
            continue
        try:
            if not data.startswith(b"\xff\xd8\xff"):
                raise BadSample("corrupt_jpg", "not a JPEG")
            height, width = jpeg_dimensions(data)       # before decoding: no pixel bombs
            if not height or not width or height * width > MAX_FRAME_PIXELS:
                raise BadSample("bad_shape", f"JPEG claims {width}x{height} pixels")
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                image.load()
                sizes.add((image.mode, image.size))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the sample's problem
            problem(f"{suffix} does not decode: {exc}", key)
    for mode, (width, height) in sizes:
        if mode != "RGB" or width != height or (frame_size and width != frame_size):
            problem(f"frame is {mode} {width}x{height}, expected RGB square "
                    f"{frame_size or ''}".rstrip(), key)


def _shown(key) -> str | None:
    """A key as printed in a problem (quoted unless it is a safe key)."""
    if key is None:
        return None
    return key if fmt.is_safe_key(key) else repr(key[:140])
