"""The plan (`manifest.parquet`): every input row, its sample key, candidate files and shard.

Built from the manifest and the plan parameters alone (never from which files exist), so every
re-run and every parallel task computes the same plan. Rows keep manifest order; shards take
consecutive rows, closed at `samples_per_shard` rows or when the rows' worst-case sample sizes
(true upper bounds, see `worst_case_bytes`) would pass `max_shard_bytes`, so no tar is larger.
The plan is written once, atomically; a later run whose plan or output parameters differ is
refused with a message saying what changed.
"""
from __future__ import annotations

import hashlib
import json
import string
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.clip import ClipTask
from pipeline.frames import jpeg_budget
from pipeline.labels import Vocabulary
from pipeline.manifest import Manifest, ManifestError
from pipeline.media import audio_limit_bytes
from pipeline.output_files import write_atomic
from pipeline.params import ClipParams, ParamsError
from shards import format as fmt

DEFAULT_EXTENSIONS = ("mp4", "mkv", "webm", "avi", "mov", "flv", "m4a", "wav", "flac", "mp3")
_META_KEY = b"avsiam.plan"


class PlanMismatch(RuntimeError):
    """The stored plan was made from other inputs or parameters."""


@dataclass(frozen=True, kw_only=True)
class PlanParams:
    """What decides the row -> shard assignment and the candidate file names."""

    split: str = "train"
    """Split name in shard file names ({split}-000000.tar)."""
    samples_per_shard: int = 1000
    """Most rows per shard."""
    max_shard_bytes: int = 2 << 30
    """Most bytes per tar, guaranteed by planning with each row's worst-case sample size (a row
    that alone could exceed it is refused)."""
    template: str = "{ytid}"
    """File name under --videos; fields {ytid} {id} {start} {end} {start_ms} {end_ms}."""
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    """Extensions tried, in order, when the template has none of them."""
    clip_seconds: float | None = None
    """Window length for rows without an end (e.g. a folder of long files); None = whole file."""

    def __post_init__(self) -> None:
        if not self.split or fmt.sanitize_key(self.split) != self.split:
            raise ParamsError(f"split {self.split!r} may hold only letters, digits, '_' and '-'")
        if self.samples_per_shard < 1 or self.max_shard_bytes < 1 << 20:
            raise ParamsError("samples_per_shard must be >= 1 and max_shard_bytes >= 1 MiB")
        if self.clip_seconds is not None and not self.clip_seconds > 0:
            raise ParamsError(f"clip_seconds must be > 0, got {self.clip_seconds}")
        object.__setattr__(self, "extensions",
                           tuple(e.lower().lstrip(".") for e in self.extensions if e.strip()))


@dataclass
class Plan:
    table: pa.Table
    meta: dict
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        shards = self.table.column("shard").to_pylist()
        self.offsets = [0] + [i for i in range(1, len(shards)) if shards[i] != shards[i - 1]]
        self.offsets.append(len(shards))

    @property
    def num_shards(self) -> int:
        return len(self.offsets) - 1

    @property
    def split(self) -> str:
        return self.meta["plan_params"]["split"]

    def shard_slice(self, shard: int) -> pa.Table:
        return self.table.slice(self.offsets[shard], self.offsets[shard + 1] - self.offsets[shard])

    def tasks(self, shard: int) -> list[ClipTask]:
        extensions = tuple(self.meta["plan_params"]["extensions"])
        return [ClipTask(row=r["row"], key=r["key"], source_id=r["source_id"],
                         candidates=candidates(r["path"], extensions), start=r["start"],
                         end=r["end"], labels=tuple(r["labels"]),
                         label_indices=tuple(r["label_indices"]))
                for r in self.shard_slice(shard).to_pylist()]


def _number(value: float | None):
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


class TemplateRenderer:
    """Renders `--template` for a row: fields {ytid} {id} {start} {end} {start_ms} {end_ms}."""

    def __init__(self, template: str):
        self.template = template
        self._fields = {name.split(".")[0].split("[")[0]
                        for _, name, _, _ in string.Formatter().parse(template) if name}

    def names(self, source_ids: list[str], paths: list, starts: list, ends: list) -> list[str]:
        """Each row's file name: its manifest path, else the template's (a template of the id
        alone costs no per-row formatting)."""
        if self.template in ("{ytid}", "{id}"):
            return [path or source for path, source in zip(paths, source_ids)]
        return [path or self(source, start, end)
                for source, path, start, end in zip(source_ids, paths, starts, ends)]

    def __call__(self, source_id: str, start: float | None, end: float | None) -> str:
        fields = self._fields
        values = {}
        if "ytid" in fields or "id" in fields:
            values["ytid"] = values["id"] = source_id
        if "start" in fields:
            values["start"] = _number(start)
        if "end" in fields:
            values["end"] = _number(end)
        if "start_ms" in fields:
            values["start_ms"] = None if start is None else int(round(start * 1000))
        if "end_ms" in fields:
            values["end_ms"] = None if end is None else int(round(end * 1000))
        try:
            return self.template.format_map(values)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ManifestError(f"--template {self.template!r} does not fit row {source_id!r} "
                                f"(start={start}, end={end}): {exc!r}") from None


def render_template(template: str, source_id: str, start: float | None,
                    end: float | None) -> str:
    """The file name of a row under --videos (extension alternatives come from `candidates`)."""
    return TemplateRenderer(template)(source_id, start, end)


def candidates(name: str, extensions: tuple[str, ...]) -> tuple[str, ...]:
    """Files tried for a row, in order: the name itself, then the name with each extension
    (replacing its own extension when that is one of them)."""
    stem, dot, ext = name.rpartition(".")
    if dot and "/" not in ext and ext.lower() in extensions:
        return (name,) + tuple(f"{stem}.{e}" for e in extensions if e != ext.lower())
    return (name,) + tuple(f"{name}.{e}" for e in extensions)


SHARD_TAIL_BYTES = 2 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE
"""Most bytes a tar adds after its last member (end-of-archive blocks, padding to a record)."""
_NAME_MAX = 100                      # longer member names get a PAX header (one more block pair)


def worst_case_bytes(window_s: float, params: ClipParams) -> int:
    """Upper bound of the bytes of one sample of a `window_s` window whose key, id, file name and
    labels are short (`sample_bytes_bound` adds what long ones cost). A true bound: the audio is
    capped by `media.audio_limit_bytes`, the fbank follows from it (one 128-bin frame per 10 ms
    of samples), each JPEG by `frames.jpeg_budget`, and every member takes at most one header
    block plus one block of padding."""
    samples = audio_limit_bytes(window_s) // 2
    fbank = 128 + (samples // 160 + 1) * fmt.NUM_MEL_BINS * 2          # npy header + float16
    frames = params.num_frames * jpeg_budget(params.frame_size)
    members = params.num_frames + 2
    return fbank + frames + _JSON_FIXED_BYTES + members * 2 * tarfile.BLOCKSIZE


_JSON_FIXED_BYTES = 1024             # the sample json without its strings (names, numbers)


def sample_bytes_bound(base: int, params: ClipParams, key: str, source_id: str, name: str,
                       labels, extensions: tuple[str, ...]) -> int:
    """`base` (worst_case_bytes of the row's window) plus the row's strings: in the json each
    character takes at most 12 bytes (ensure_ascii escapes), the stored path is at most the file
    name with the longest extension; a key too long for a tar name adds a PAX header per member."""
    path = len(name) + 1 + max((len(e) for e in extensions), default=0)
    text = len(key) + len(source_id) + path + sum(len(label) + 2 for label in labels)
    long_names = len(key) + 1 + len(fmt.FBANK_SUFFIX) > _NAME_MAX
    pax = (params.num_frames + 2) * 2 * tarfile.BLOCKSIZE if long_names else 0
    return base + 12 * text + 16 * len(labels) + pax


def unique_keys(source_ids: list[str], starts: list[float | None]) -> list[str]:
    """sample_key of each row; later duplicates get the smallest free -1, -2, ... (deterministic,
    in row order). Linear: each key's search resumes after the suffix it handed out last (every
    smaller one is taken for good), so 20,000 copies of one id cost 20,000 steps, not 2e8."""
    keys = [fmt.sample_key(s, t) for s, t in zip(source_ids, starts)]
    taken = set(keys)
    seen: set[str] = set()
    next_suffix: dict[str, int] = {}
    out = []
    for key in keys:
        if key in seen:
            n = next_suffix.get(key, 1)
            while f"{key}-{n}" in taken:
                n += 1
            next_suffix[key] = n + 1
            key = f"{key}-{n}"
            taken.add(key)
        seen.add(key)
        out.append(key)
    return out


def build_plan(manifest: Manifest, vocabulary: Vocabulary, plan_params: PlanParams,
               clip_params: ClipParams, params_hash: str, videos: str | Path | None = None) -> Plan:
    """The plan of `manifest`; `videos` (the --videos folder, stored absolute) is part of what a
    re-run must repeat."""
    try:
        label_indices = [vocabulary.indices(labels) for labels in manifest.labels]
    except KeyError:
        unknown = sorted({label for labels in manifest.labels
                          for label in vocabulary.unknown(labels)})
        raise ManifestError(f"{len(unknown)} label(s) of the manifest are not in "
                            f"{vocabulary.source} (e.g. {', '.join(unknown[:5])}); pass the "
                            f"matching --labels file") from None
    if len(manifest) == 0:
        raise ManifestError("the manifest has no rows (check --manifest, --select-split, --videos)")
    ends = [end if end is not None or plan_params.clip_seconds is None
            else (start or 0.0) + plan_params.clip_seconds
            for start, end in zip(manifest.starts, manifest.ends)]
    names = TemplateRenderer(plan_params.template).names(manifest.source_ids, manifest.paths,
                                                         manifest.starts, ends)
    keys = unique_keys(manifest.source_ids, manifest.starts)
    shards, shard, count, size = [], 0, 0, 0
    room = plan_params.max_shard_bytes - SHARD_TAIL_BYTES
    costs: dict[float, int] = {}
    for row, (start, end) in enumerate(zip(manifest.starts, ends)):
        window = clip_params.max_window_seconds if end is None else \
            min(end - (start or 0.0), clip_params.max_window_seconds)
        base = costs.get(window)
        if base is None:
            base = costs[window] = worst_case_bytes(max(window, 0.0), clip_params)
        cost = sample_bytes_bound(base, clip_params, keys[row], manifest.source_ids[row],
                                  names[row], manifest.labels[row], plan_params.extensions)
        if cost > room:
            raise ParamsError(
                f"--max-shard-bytes {plan_params.max_shard_bytes} is below what one sample can "
                f"take (row {row}: up to {cost + SHARD_TAIL_BYTES} bytes with --frame-size "
                f"{clip_params.frame_size}, --num-frames {clip_params.num_frames} and a "
                f"{max(window, 0.0):g} s window); raise --max-shard-bytes to at least "
                f"{cost + SHARD_TAIL_BYTES} or lower --frame-size/--num-frames")
        if count and (count >= plan_params.samples_per_shard or size + cost > room):
            shard, count, size = shard + 1, 0, 0
        shards.append(shard)
        count, size = count + 1, size + cost
    table = pa.table({
        "row": pa.array(range(len(manifest)), pa.int64()),
        "key": pa.array(keys, pa.string()),
        "source_id": pa.array(manifest.source_ids, pa.string()),
        "path": pa.array(names, pa.string()),
        "start": pa.array(manifest.starts, pa.float64()),
        "end": pa.array(ends, pa.float64()),
        "labels": pa.array(manifest.labels, pa.list_(pa.string())),
        "label_indices": pa.array(label_indices, pa.list_(pa.int32())),
        "shard": pa.array(shards, pa.int32()),
        "split": pa.array([plan_params.split] * len(manifest), pa.string()),
    })
    meta = {"plan_hash": table_hash(table), "params_hash": params_hash,
            "plan_params": _jsonable(asdict(plan_params)),
            "clip_params": _jsonable(clip_params.as_dict()),
            "videos": None if videos is None else str(Path(videos).resolve()),
            "manifest_kind": manifest.kind, "num_rows": len(manifest),
            "num_shards": shards[-1] + 1, "vocabulary": vocabulary.as_dict(),
            "format_version": fmt.FORMAT_VERSION}
    return Plan(table, meta)


def table_hash(table: pa.Table) -> str:
    """Hash of the table's Arrow IPC bytes (same rows and types, same bytes)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def write_plan(plan: Plan, out_dir: Path) -> Path:
    """Write manifest.parquet atomically (this writer's temp name, fsync, rename); the caller holds
    the folder's plan lock."""
    target = out_dir / fmt.MANIFEST_NAME
    table = plan.table.replace_schema_metadata({_META_KEY: json.dumps(plan.meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(target, sink.getvalue().to_pybytes())
    return target


def read_plan(out_dir: Path) -> Plan:
    table = pq.read_table(out_dir / fmt.MANIFEST_NAME)
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if "plan_hash" not in meta:
        raise PlanMismatch(f"{out_dir / fmt.MANIFEST_NAME} is not an avsiam plan")
    return Plan(table.replace_schema_metadata(None), meta)


def load_or_write(plan: Plan, out_dir: Path) -> Plan:
    """Store `plan` in out_dir, or check it equals the stored one: same rows and shards, same
    plan parameters (--template, --extensions, ...), same --videos, same output parameters
    (--frame-size, --segments, --min-coverage, ...). A mismatch names what changed."""
    if not (out_dir / fmt.MANIFEST_NAME).exists():
        write_plan(plan, out_dir)
        return plan
    check_same(read_plan(out_dir), plan, out_dir / fmt.MANIFEST_NAME)
    return plan


def check_same(stored: Plan, plan: Plan, where: Path) -> None:
    """Raise PlanMismatch unless `plan` repeats the inputs and parameters of `stored`."""
    old, new = stored.meta, plan.meta
    if old["plan_hash"] != new["plan_hash"] or old["plan_params"] != new["plan_params"]:
        raise PlanMismatch(
            f"{where} was made from another manifest or plan parameters (rows "
            f"{old['num_rows']} vs {new['num_rows']}, plan params "
            f"{_diff(old['plan_params'], new['plan_params'])}); use a new --out, "
            f"or delete {where} and the shards to start over")
    if "videos" in old and old["videos"] != new.get("videos"):   # (older plans lack it)
        raise PlanMismatch(
            f"{where} was made from --videos {old.get('videos')}, not {new.get('videos')}; pass "
            f"the same --videos (a re-run may not take other files silently), or use a new --out")
    if old["params_hash"] != new["params_hash"]:
        raise PlanMismatch(
            f"{where} was made with other output parameters "
            f"({_diff(old['clip_params'], new['clip_params'])}); use a new --out or "
            f"the same parameters")


def _jsonable(values: dict) -> dict:
    return json.loads(json.dumps(values))


def _diff(old: dict, new: dict) -> str:
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    return "; ".join(changed) or "same values"

