"""Safe, fast reading of .npy members: `np.load(allow_pickle=False)` with bounds checked first.

Before anything is loaded, the header is parsed with numpy's own header readers (a literal parser,
no unpickling) and refused unless its dtype is float16/float32 and the bytes present hold the shape
it declares, so neither an object array (whose unpickling could run code) nor a header claiming
terabytes ever reaches np.load. The header of every clip of a given length is byte-identical and
parsing it costs about as much as reading the array, so the layout np.load produced for a header is
remembered, and later arrays with the same header bytes are viewed with np.frombuffer.
"""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch

from .errors import BadSample

NPY_MAGIC = b"\x93NUMPY"
ALLOWED_DTYPES = (np.dtype("float16"), np.dtype("float32"))
_LAYOUTS: dict[bytes, tuple] = {}
_MAX_LAYOUTS = 1024
_MAX_CACHED_HEADER = 256          # numpy writes 128-byte headers
_EXPONENT = {np.dtype("float16"): (np.uint16, 0x7C00), np.dtype("float32"): (np.uint32, 0x7F800000)}


def load_array(data: bytes, what: str) -> np.ndarray:
    """The float16/float32 array of an .npy member (read-only view); BadSample otherwise."""
    if not isinstance(data, bytes) or not data.startswith(NPY_MAGIC) or len(data) < 12:
        raise BadSample("corrupt_npy", f"{what} is not an .npy array")
    header_len = (int.from_bytes(data[8:10], "little") + 10 if data[6] == 1
                  else int.from_bytes(data[8:12], "little") + 12)
    header = data[:header_len]
    layout = _LAYOUTS.get(header)
    if layout is None:
        layout = _check_header(data, what)
        arr = _np_load(data, what)
        if len(_LAYOUTS) < _MAX_LAYOUTS and header_len <= _MAX_CACHED_HEADER:
            _LAYOUTS[header] = layout
        return arr
    dtype, shape, fortran = layout
    count = math.prod(shape)
    if len(data) - header_len < count * dtype.itemsize:
        raise BadSample("corrupt_npy", f"{what} is shorter than its header says")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header_len)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _check_header(data: bytes, what: str) -> tuple:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = reader(stream)
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises many kinds
        raise BadSample("corrupt_npy", f"{what} has an unreadable .npy header: "
                                       f"{type(e).__name__}: {str(e)[:200]}") from None
    if dtype not in ALLOWED_DTYPES:
        raise BadSample("bad_dtype", f"{what} has dtype {dtype}, expected float16")
    if len(data) - stream.tell() < math.prod(shape) * dtype.itemsize:
        raise BadSample("corrupt_npy", f"{what} is shorter than its header says")
    return dtype, tuple(shape), bool(fortran)


def _np_load(data: bytes, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise BadSample("corrupt_npy", f"{what} does not load without pickle: "
                                       f"{type(e).__name__}: {str(e)[:200]}") from None


def all_finite(arr: np.ndarray) -> bool:
    """No NaN/inf: no value has an all-ones exponent (a bit test, ~30x faster than isfinite on f16)."""
    bits, mask = _EXPONENT[arr.dtype]
    return int(np.bitwise_and(np.ascontiguousarray(arr).view(bits), mask).max(initial=0)) != mask


def readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    """torch view of a (possibly read-only, bytes-backed) array that is only ever read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)
