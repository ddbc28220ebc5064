"""Safe decoding of the three member types, and nothing else.

- KEY.fbank.npy: `shards.npy.load_array`: the header is checked (float16/float32 only, size
  present) before `np.load(allow_pickle=False)`, so an object array is never unpickled and no code in
  a shard can run. Must be [T>0, 128] and finite.
- KEY.fN.jpg: JPEG magic and the frame header's size (<= 4096 x 4096) checked, then decoded by
  torchvision's JPEG decoder only (RGB, uint8).
- KEY.json: at most 64 KiB, `json.loads`, must be an object; label indices must be integers.
Every failure raises `BadSample(reason, message)`; the stream counts it and moves on (so does any
other exception a decoder raises: see rows.RowDecoder).
"""
from __future__ import annotations

import json

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import InterpolationMode, resize

from .errors import BadSample
from .npy import all_finite, load_array
from .format import (FBANK_SUFFIX, FRAME_SUFFIX_RE, MAX_FRAME_SIZE, MAX_META_BYTES, META_SUFFIX,
                     NUM_MEL_BINS, frame_suffix)

JPEG_MAGIC = b"\xff\xd8\xff"
MAX_FRAME_PIXELS = MAX_FRAME_SIZE * MAX_FRAME_SIZE
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def decode_fbank(data: bytes) -> np.ndarray:
    """The raw log-mel fbank [T, 128] as stored (float16 or float32)."""
    arr = load_array(data, FBANK_SUFFIX)
    if arr.ndim != 2 or arr.shape[1] != NUM_MEL_BINS or arr.shape[0] == 0:
        raise BadSample("bad_shape", f"{FBANK_SUFFIX} has shape {arr.shape}, expected [T>0, {NUM_MEL_BINS}]")
    if not all_finite(arr):
        raise BadSample("nonfinite", f"{FBANK_SUFFIX} holds NaN or inf values")
    return arr


def decode_frame(data: bytes, size: int) -> torch.Tensor:
    """One JPEG frame as uint8 [3, size, size] (bicubic-resized if stored at another size)."""
    if not isinstance(data, bytes) or not data.startswith(JPEG_MAGIC):
        raise BadSample("corrupt_jpg", "frame is not a JPEG")
    height, width = jpeg_dimensions(data)
    if height * width > MAX_FRAME_PIXELS or not height or not width:
        raise BadSample("bad_shape", f"JPEG claims {width}x{height} pixels")
    try:
        img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise BadSample("corrupt_jpg", f"JPEG does not decode: {e}") from None
    if img.ndim != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 1:
        raise BadSample("bad_shape", f"frame has shape {tuple(img.shape)}")
    if img.shape[1] != size or img.shape[2] != size:
        img = resize(img, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return img


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(height, width) from the JPEG frame header, read before decoding (no pixel bombs)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:                                  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:         # markers without a length
            i += 2
            continue
        if marker in _SOF_MARKERS and i + 9 <= n:
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        if marker == 0xDA:                                  # scan data before any frame header
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise BadSample("corrupt_jpg", "JPEG has no readable frame header")


def decode_meta(data: bytes) -> dict:
    """The sample's metadata object."""
    if not isinstance(data, bytes) or len(data) > MAX_META_BYTES:
        raise BadSample("corrupt_json", f"{META_SUFFIX} is missing or larger than {MAX_META_BYTES} bytes")
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as e:       # RecursionError: nesting too deep
        raise BadSample("corrupt_json", f"{META_SUFFIX} is not valid JSON: {type(e).__name__}: "
                                        f"{str(e)[:200]}") from None
    if not isinstance(meta, dict):
        raise BadSample("corrupt_json", f"{META_SUFFIX} is not a JSON object")
    labels = meta.get("label_indices", [])
    if labels is None:
        labels = []
    if not isinstance(labels, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                               for i in labels):
        raise BadSample("bad_label", f"label_indices {labels!r} is not a list of integers")
    return meta


def frame_count(sample: dict) -> int:
    """N of the raw sample's contiguous frames f0..f{N-1}."""
    indices = sorted(int(m.group("i")) for k in sample if isinstance(k, str)
                     and (m := FRAME_SUFFIX_RE.match(k)))
    if not indices or indices != list(range(len(indices))):
        raise BadSample("missing_member", f"frames {indices} are not f0..f{len(indices) - 1}")
    return len(indices)


def require_members(sample: dict, frames: list[int] | None = None) -> None:
    """The raw sample has the members every mode needs (frame 0, or the frames picked while reading)
    and no duplicate member."""
    if sample.get("__duplicate__"):
        raise BadSample("duplicate_member", f"member .{sample['__duplicate__']} appears twice")
    wanted = [frame_suffix(i) for i in (frames if frames is not None else [0])]
    for suffix in (FBANK_SUFFIX, *wanted, META_SUFFIX):
        if suffix not in sample:
            raise BadSample("missing_member", f"member .{suffix} is missing")
