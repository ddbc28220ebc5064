"""Manifest readers: what users have -> one list of clips (source id, file, window, labels).

Formats (`kind`):
- `audioset`: segment CSVs (three `# ...` lines, or none, then `YTID, start, end, "mid1,mid2"`).
- `vggsound`: no header, `ytid,start,label,split`; the clip is start .. start + 10 s. A file with
  train and test rows needs `--select-split` (`choose_split`).
Both are parsed strictly: a quote left open or a row with the wrong number of fields stops the
job with the file and line number, instead of running into the next rows.
- `csv` / `parquet`: a header with an id column (`id`, `ytid`, `youtube_id`, `video_id`,
  `source_id`) and/or a `path` column, optional `start`/`end` (or `*_seconds`) and `labels`
  (comma-separated, or a list in Parquet) or `label` (one label).
- `folder`: every media file under --videos (sorted), whole file, no labels.
`auto` picks the format from the file name and its first line.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

VGGSOUND_SECONDS = 10.0
VGGSOUND_SPLITS = ("train", "test")
ALL_SPLITS = "all"
KINDS = ("auto", "audioset", "vggsound", "csv", "parquet", "folder")
_ID_COLUMNS = ("id", "ytid", "youtube_id", "video_id", "source_id")
_PATH_COLUMNS = ("path", "file", "filename")
_START_COLUMNS = ("start", "start_seconds", "start_time")
_END_COLUMNS = ("end", "end_seconds", "end_time")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file, the line and the fix."""


@dataclass
class Manifest:
    """Clips in input order (parallel lists), plus the format they came from."""

    kind: str
    source_ids: list[str] = field(default_factory=list)
    paths: list[str | None] = field(default_factory=list)
    starts: list[float | None] = field(default_factory=list)
    ends: list[float | None] = field(default_factory=list)
    labels: list[tuple[str, ...]] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)

    def add(self, source_id: str, path: str | None, start: float | None, end: float | None,
            labels: tuple[str, ...], split: str | None = None) -> None:
        self.source_ids.append(source_id)
        self.paths.append(path)
        self.starts.append(start)
        self.ends.append(end)
        self.labels.append(labels)
        self.splits.append(split)

    def __len__(self) -> int:
        return len(self.source_ids)

    def select_split(self, split: str) -> "Manifest":
        """Only the rows whose own split column (VGGSound's train/test) equals `split`."""
        out = Manifest(self.kind)
        for i, row_split in enumerate(self.splits):
            if row_split == split:
                out.add(self.source_ids[i], self.paths[i], self.starts[i], self.ends[i],
                        self.labels[i], row_split)
        return out


def _seconds(text, where: str) -> float | None:
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ManifestError(f"{where}: {text!r} must be a finite number >= 0")
    return value


def _split_labels(text) -> tuple[str, ...]:
    if text is None:
        return ()
    if isinstance(text, (list, tuple)):
        return tuple(str(t).strip() for t in text if str(t).strip())
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def detect_kind(manifest: str | Path | None) -> str:
    """The format of a manifest from its name and first line: '#' lines or a headerless
    `YTID, start, end, "labels"` row -> audioset; `ytid,start,label,train|test` -> vggsound; else
    a generic CSV (with a header)."""
    if manifest is None:
        return "folder"
    path = Path(manifest)
    if path.suffix.lower() == ".parquet":
        return "parquet"
    try:
        with open(path, encoding="utf-8-sig") as handle:
            first = next((line for line in handle if line.strip()), "")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from None
    if first.startswith("#"):
        return "audioset"
    fields = next(csv.reader([first], skipinitialspace=True), [])
    if len(fields) == 4 and _is_number(fields[1]):
        if fields[3].strip().lower() in VGGSOUND_SPLITS:
            return "vggsound"
        if _is_number(fields[2]):
            return "audioset"
    return "csv"


def read_manifest(manifest: str | Path | None, kind: str = "auto", *, videos: str | Path = "",
                  extensions: tuple[str, ...] = ()) -> Manifest:
    """Read any supported manifest; `videos` and `extensions` are used by the folder kind."""
    if kind not in KINDS:
        raise ManifestError(f"unknown manifest format {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "auto":
        kind = detect_kind(manifest)
    if kind == "folder":
        return read_folder(videos, extensions)
    if manifest is None:
        raise ManifestError(f"--manifest is required for the {kind} format")
    reader = {"audioset": read_audioset, "vggsound": read_vggsound, "csv": read_table,
              "parquet": read_table}[kind]
    return reader(Path(manifest))


def _csv_rows(path: Path, expected: str):
    """(line number, fields) of each non-blank, non-'#' row of a headerless CSV, strictly parsed:
    a quote left open (which would swallow the next rows into one field) or a stray quote stops
    with the file and line number."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        line_no = 0
        while True:                            # the leading '#' lines, kept out of the CSV parser
            at = handle.tell()
            if not handle.readline().startswith("#"):
                handle.seek(at)
                break
            line_no += 1
        skipped = line_no
        reader = csv.reader(handle, skipinitialspace=True, strict=True)
        try:
            for fields in reader:
                line_no += 1
                if reader.line_num + skipped != line_no:
                    raise ManifestError(f"{path}:{line_no}: a quote opened on this line is not "
                                        f"closed before line {reader.line_num + skipped}; "
                                        f"expected {expected}")
                if len(fields) > 1 or (fields and fields[0].strip()
                                       and not fields[0].startswith("#")):
                    yield line_no, fields
        except csv.Error as exc:
            raise ManifestError(f"{path}:{line_no + 1}: malformed row ({exc}); expected "
                                f"{expected}") from None


def _label_list(text: str) -> tuple[str, ...]:
    """'mid1,mid2' -> ('mid1', 'mid2'), without blanks or surrounding spaces."""
    if text and " " not in text and ",," not in text and text[0] != "," and text[-1] != ",":
        return tuple(text.split(","))           # the published form, quickly
    return tuple(filter(None, map(str.strip, text.split(","))))


_AUDIOSET_ROW = 'YTID, start_seconds, end_seconds, "label1,label2"'


def read_audioset(path: Path) -> Manifest:
    """An AudioSet segments CSV, with or without its three '#' lines."""
    ids, starts, ends, labels = [], [], [], []
    for line_no, fields in _csv_rows(path, _AUDIOSET_ROW):
        if len(fields) != 4 or not fields[0].strip():
            raise ManifestError(f"{path}:{line_no}: expected 4 fields {_AUDIOSET_ROW} (the label "
                                f"list quoted), got {len(fields)}: {','.join(fields)[:120]!r}")
        try:  # fast path; _seconds gives the precise error
            start, end = float(fields[1]), float(fields[2])
            if not (0.0 <= start < math.inf and 0.0 <= end < math.inf):
                raise ValueError
        except ValueError:
            start = _seconds(fields[1], f"{path}:{line_no}")
            end = _seconds(fields[2], f"{path}:{line_no}")
        ids.append(fields[0].strip())
        starts.append(start)
        ends.append(end)
        labels.append(_label_list(fields[3]))
    return Manifest("audioset", ids, [None] * len(ids), starts, ends, labels, [None] * len(ids))


_VGGSOUND_ROW = '\'ytid,start_seconds,label,split\' (quote labels that contain commas)'


def read_vggsound(path: Path) -> Manifest:
    out = Manifest("vggsound")
    for line_no, fields in _csv_rows(path, _VGGSOUND_ROW):
        where = f"{path}:{line_no}"
        if len(fields) != 4 or not fields[0].strip():
            raise ManifestError(f"{where}: expected 4 fields {_VGGSOUND_ROW}, got "
                                f"{len(fields)}: {','.join(fields)[:120]!r}")
        start = _seconds(fields[1], where)
        label = fields[2].strip()
        out.add(fields[0].strip(), None, start, (start or 0.0) + VGGSOUND_SECONDS,
                (label,) if label else (), fields[3].strip().lower())
    return out


def choose_split(manifest: Manifest, split: str | None, source: str | Path | None) -> Manifest:
    """The rows of `--select-split split`. A manifest with rows of several splits (VGGSound's
    train and test) needs one: sharding them together would put test clips into training;
    `all` keeps every row for those who mean it."""
    splits = sorted({s for s in manifest.splits if s is not None})
    if split == ALL_SPLITS:
        return manifest
    if split is None:
        if len(splits) > 1:
            raise ManifestError(
                f"{source} holds {' and '.join(splits)} rows: pass --select-split "
                f"{' or --select-split '.join(splits)} (one --out per split); --select-split "
                f"{ALL_SPLITS} shards every row together (test clips in a training set are an "
                f"evaluation leak)")
        return manifest
    if not splits:
        raise ManifestError(f"--select-split {split}: {source} has no split column (only "
                            f"VGGSound's CSV has one); leave --select-split out")
    if split not in splits:
        raise ManifestError(f"--select-split {split}: {source} has no {split!r} rows (its splits: "
                            f"{', '.join(splits)})")
    return manifest.select_split(split)


def _column(names: list[str], options: tuple[str, ...]) -> str | None:
    lowered = {n.lower(): n for n in names}
    return next((lowered[o] for o in options if o in lowered), None)


def _check_parquet_types(path: Path, schema) -> None:
    """Refuse Parquet columns whose type would be coerced into something else (booleans read as
    seconds, float ids as '1.0' or 'nan'), naming the column and the accepted types."""
    import pyarrow as pa

    t = pa.types
    text = lambda x: t.is_string(x) or t.is_large_string(x) or (  # noqa: E731
        t.is_dictionary(x) and (t.is_string(x.value_type) or t.is_large_string(x.value_type)))
    number = lambda x: t.is_integer(x) or t.is_floating(x)        # noqa: E731
    text_list = lambda x: (t.is_list(x) or t.is_large_list(x)) and text(x.value_type)  # noqa
    rules = [(_ID_COLUMNS, lambda x: text(x) or t.is_integer(x), "a string or integer"),
             (_PATH_COLUMNS, text, "a string"),
             (_START_COLUMNS, number, "a number of seconds"),
             (_END_COLUMNS, number, "a number of seconds"),
             (("labels", "positive_labels"), lambda x: text(x) or text_list(x),
              "a string (comma-separated) or a list of strings"),
             (("label",), lambda x: text(x) or t.is_integer(x), "a string or integer")]
    for options, accepted, expected in rules:
        name = _column(schema.names, options)
        if name is None:
            continue
        kind = schema.field(name).type
        if not (accepted(kind) or t.is_null(kind)):
            raise ManifestError(f"{path}: column {name!r} has type {kind}; it must be {expected} "
                                f"(convert the column, e.g. with pyarrow's cast, and write the "
                                f"manifest again)")


def read_table(path: Path) -> Manifest:
    """A generic CSV (with header) or Parquet manifest."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ManifestError(f"cannot read Parquet manifest {path}: {exc}") from None
        _check_parquet_types(path, table.schema)
        data = table.to_pydict()
        names = list(data)
        rows = [{n: data[n][i] for n in names} for i in range(len(data[names[0]]))] if names else []
        kind = "parquet"
    else:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            names = list(reader.fieldnames or [])
            rows = list(reader)
        kind = "csv"
    id_col, path_col = _column(names, _ID_COLUMNS), _column(names, _PATH_COLUMNS)
    if id_col is None and path_col is None:
        raise ManifestError(f"{path}: needs an id column ({', '.join(_ID_COLUMNS)}) or a path "
                            f"column ({', '.join(_PATH_COLUMNS)}); found {', '.join(names)}")
    start_col, end_col = _column(names, _START_COLUMNS), _column(names, _END_COLUMNS)
    labels_col = _column(names, ("labels", "positive_labels"))
    label_col = _column(names, ("label",))
    out = Manifest(kind)
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        file = str(row[path_col]).strip() if path_col and row[path_col] not in (None, "") else None
        source = str(row[id_col]).strip() if id_col and row[id_col] not in (None, "") else None
        if source is None:
            if file is None:
                raise ManifestError(f"{where}: has neither an id nor a path")
            source = os.path.splitext(file)[0]
        labels = _split_labels(row[labels_col]) if labels_col else ()
        if label_col and row[label_col] not in (None, ""):
            labels += (str(row[label_col]).strip(),)
        out.add(source, file, _seconds(row[start_col], where) if start_col else None,
                _seconds(row[end_col], where) if end_col else None, labels)
    return out


def read_folder(videos: str | Path, extensions: tuple[str, ...]) -> Manifest:
    """Every file under `videos` whose extension is listed, sorted by relative path."""
    root = Path(videos)
    if not root.is_dir():
        raise ManifestError(f"--videos {root} is not a folder")
    wanted = {e.lower().lstrip(".") for e in extensions}
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower().lstrip(".") in wanted:
                found.append(Path(folder, name).relative_to(root).as_posix())
    out = Manifest("folder")
    for rel in sorted(found):
        out.add(os.path.splitext(rel)[0], rel, None, None, ())
    return out
