"""The shard format: the one contract between `pipeline/` (writer) and the loaders (reader).

Version 1. Everything a writer or reader needs to agree on is defined here, once.

Files of a sharded split, in OUT_DIR:

    {split}-{index:06d}.tar            WebDataset tar shard (members below), complete before renaming
    {split}-{index:06d}.parquet        one row per input row assigned to the shard (ok or failed)
    {split}-{index:06d}.stats.json     written LAST: its presence commits the shard
    manifest.parquet                   the plan: input row -> shard assignment
    dataset.json                       dataset-level counts, failure reasons, parameters, fbank stats

Members of a sample with key KEY, in this order inside the tar:

    KEY.fbank.npy    float16 [T, 128] raw Kaldi log-mel fbank (unpadded, unnormalised); absent
                     when the clip has no audio stream and single-modality clips are kept
    KEY.f0.jpg ...   the N frames (JPEG, RGB, FRAME_SIZE x FRAME_SIZE), f0 first; absent without video
    KEY.json         metadata (META_FIELDS)

Keys contain only [A-Za-z0-9_-] (no '.', '/', control characters), so webdataset's key/suffix split
is unambiguous and extracting a shard with `tar` cannot write outside its folder.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .files import open_regular

FORMAT_VERSION = 1

# --- shard naming -------------------------------------------------------------------------------
SHARD_DIGITS = 6
SHARD_NAME_RE = re.compile(r"^(?P<split>[A-Za-z0-9_-]+)-(?P<index>\d{6})\.tar$")
MANIFEST_NAME = "manifest.parquet"
DATASET_JSON = "dataset.json"


def shard_stem(split: str, index: int) -> str:
    """`train-000042` for split 'train', index 42."""
    return f"{split}-{index:0{SHARD_DIGITS}d}"


@dataclass(frozen=True)
class ShardFiles:
    """The three files of one shard, by purpose."""

    tar: Path
    record: Path
    stats: Path

    @classmethod
    def of(cls, out_dir: str | Path, split: str, index: int) -> "ShardFiles":
        stem = Path(out_dir) / shard_stem(split, index)
        return cls(tar=stem.with_suffix(".tar"), record=stem.with_suffix(".parquet"),
                   stats=stem.with_suffix(".stats.json"))


def brace_pattern(out_dir: str | Path, split: str, num_shards: int) -> str:
    """A webdataset brace URL covering shards 0..num_shards-1 of a split."""
    last = shard_stem(split, num_shards - 1).rsplit("-", 1)[1]
    return f"{Path(out_dir)}/{split}-{{{'0' * SHARD_DIGITS}..{last}}}.tar"


# --- sample members -----------------------------------------------------------------------------
FBANK_SUFFIX = "fbank.npy"
META_SUFFIX = "json"
FRAME_SUFFIX_RE = re.compile(r"^f(?P<i>\d+)\.jpg$")
NUM_MEL_BINS = 128
FBANK_DTYPE = "float16"
DEFAULT_NUM_FRAMES = 10
DEFAULT_FRAME_SIZE = 224
# The only member suffixes a loader decodes; anything else in a shard is ignored, never decoded.
DECODABLE_SUFFIXES = ("npy", "jpg", "json")

# --- bounds: what a writer may produce and the most a reader accepts ----------------------------
MAX_FRAMES = 1000              # frames per clip (f0 .. f999)
MIN_FRAME_SIZE = 16
MAX_FRAME_SIZE = 4096          # frame side in pixels
MAX_META_BYTES = 1 << 16       # KEY.json
# All members of one sample together, as their tar headers declare them. A sample written with the
# default parameters (10 frames of 224 px, 10 s of fbank) is ~0.6 MB; one of 60 s (the pipeline's
# longest window) with 16 frames of 384 px ~3 MB. Readers refuse more before reading a byte of it.
MAX_SAMPLE_BYTES = 8 << 20


def frame_suffix(i: int) -> str:
    return f"f{i}.jpg"


FIRST_FRAME = frame_suffix(0)


def split_member(name: str) -> tuple[str | None, str | None]:
    """(key, suffix) of a tar member name, split exactly as webdataset splits it: the key ends at
    the first dot of the base name (`a/b.c.d` -> `a/b`, `c.d`); (None, None) when it has none."""
    base = name.rfind("/") + 1
    dot = name.find(".", base)
    if dot < 0:
        return None, None
    if dot == base:              # `x/.y.z`: the key is `x/` if no dot precedes it since a slash
        if base == 0 or "." in name[name.rfind("/", 0, base - 1) + 1:base]:
            return None, None
    return name[:dot], name[dot + 1:]


def frame_number(suffix: str) -> int | None:
    """i of a frame suffix "f{i}.jpg" (FRAME_SUFFIX_RE) with i < MAX_FRAMES, else None."""
    if suffix.startswith("f") and suffix.endswith(".jpg") and suffix[1:-4].isdecimal():
        index = int(suffix[1:-4])
        return index if index < MAX_FRAMES else None
    return None


def is_format_suffix(suffix: str | None) -> bool:
    """True for the member suffixes the format defines; a reader never reads any other member."""
    return suffix == FBANK_SUFFIX or suffix == META_SUFFIX or (
        suffix is not None and frame_number(suffix) is not None)


def member_suffixes(num_frames: int, has_audio: bool, has_video: bool) -> list[str]:
    """Member suffixes of one sample in tar order (fbank, frames, json)."""
    out = [FBANK_SUFFIX] if has_audio else []
    if has_video:
        out += [frame_suffix(i) for i in range(num_frames)]
    return out + [META_SUFFIX]


# Metadata fields written in KEY.json (all present; None where unknown).
META_FIELDS = (
    "key",             # sample key (also the tar member prefix)
    "source_id",       # YTID / file stem / manifest id
    "path",            # media file the sample came from, relative to --videos when possible
    "start", "end",    # clip window in seconds within the source file (end None = to the end)
    "window_source",   # "seek" (the window was seeked in a full-length file) | "cut" (the file
                       # is the segment: decoded from 0)
    "decoded_seconds", # seconds actually decoded (the shorter of the stored modalities)
    "coverage",        # decoded_seconds / seconds the window asks for, at most 1
    "labels",          # list of label ids (AudioSet mids / VGGSound label strings)
    "label_indices",   # list of int indices into the label vocabulary
    "fps", "duration", "width", "height",        # of the source video stream (duration of file)
    "audio_rate", "audio_channels",              # of the source audio stream
    "fbank_frames",    # T of KEY.fbank.npy (0 when no audio)
    "num_frames",      # N frames stored
    "frame_times",     # N presentation times (s from the window start) of the stored frames, in
                       # order ([] without video); written since pipeline 1.2, optional to readers
    "has_audio", "has_video",
    "format_version", "pipeline_version", "params_hash",
)

OPTIONAL_META_FIELDS = ("frame_times",)
"""Fields of META_FIELDS that samples written by older pipelines lack: readers accept them absent."""

# --- per-shard record (Parquet) -----------------------------------------------------------------
RECORD_COLUMNS = (
    "row",          # int: position of the input row in the plan (manifest.parquet)
    "key",          # str: sample key
    "source_id",    # str
    "path",         # str | None: resolved media path (None when no file was found)
    "status",       # "ok" | "failed"
    "reason",       # str | None: precise failure reason
    "has_audio", "has_video",   # bool: modalities present in the written sample
    "coverage",     # float | None: decoded / asked seconds of the window (ok and short_window rows)
    "window_source",  # str | None: "seek" | "cut", once the row's window was chosen
)
STATUS_OK = "ok"
STATUS_FAILED = "failed"

# --- per-shard stats file (JSON, written last: its presence commits the shard) ------------------
STATS_FIELDS = (
    "format_version", "pipeline_version", "split", "plan_hash", "params_hash",
    "shard", "tar",                     # shard index and tar file name
    "rows", "ok", "failed", "samples",  # record rows, by status; samples in the tar (== ok)
    "with_audio", "with_video",         # samples holding each modality
    "failures",                         # {reason code: count}, code = text before ':' in reason
    "tar_bytes", "tar_sha256",          # of the committed tar
    "fbank",                            # {"count", "mean", "m2"} of every fbank value (Chan)
)

# --- keys ---------------------------------------------------------------------------------------
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")
KEY_MAX_LEN = 128
_KEY_BASE_LEN = 100


def sanitize_key(text: str) -> str:
    """Map any id to a safe key: only [A-Za-z0-9_-], never empty, never '.' or '/'."""
    key = _KEY_BAD.sub("_", text)[:_KEY_BASE_LEN]
    return key or "_"


def sample_key(source_id: str, start: float | None) -> str:
    """The key of a clip: sanitised source id plus the window start in milliseconds."""
    base = sanitize_key(source_id)
    if start is None:
        return base
    return f"{base}_{int(round(start * 1000)):08d}"


def is_safe_key(key: str) -> bool:
    return bool(key) and _KEY_BAD.search(key) is None and len(key) <= KEY_MAX_LEN


# --- fbank normalisation defaults (CAV-MAE, AudioSet and VGGSound alike) --------------------------
DEFAULT_FBANK_MEAN = -5.081
DEFAULT_FBANK_STD = 4.4849
TARGET_FRAMES = 1024


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of a regular file, read in 1 MiB chunks (the stats file's
    tar_bytes/tar_sha256); NotRegularFile (an OSError) for a FIFO, device or directory."""
    digest, size = hashlib.sha256(), 0
    with open_regular(path) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
