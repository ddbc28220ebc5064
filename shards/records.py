"""The Parquet files of a shard folder as a reader trusts them: bounded before they are read.

A shard's record (`NAME.parquet`, one row per input row of the shard) is the count a loader builds
its epoch from: every rank reads the same records, so every rank yields the same number of batches.
The stats file's counts are not used for that (a stats file that disagrees with its record is
damaged, and `avsiam verify` says so). A record is refused, with an error naming it, when it is
not a regular file, declares more rows or bytes than a shard can have, has columns of the wrong
type, or lists more usable samples than its tar could hold (each takes at least three members of a
header and a data block: MIN_SAMPLE_TAR_BYTES), so that no record can inflate an epoch.
"""
from __future__ import annotations

import os

from .files import MetadataError, open_regular
from .format import STATUS_OK
from .tarscan import BLOCK

MAX_RECORD_ROWS = 1 << 20                # rows of one shard's record
MAX_RECORD_BYTES = 256 << 20             # declared uncompressed bytes of the columns read
MAX_MANIFEST_ROWS = 1 << 30              # rows of a split's plan (manifest.parquet)
MAX_MANIFEST_BYTES = 16 << 30
MIN_SAMPLE_TAR_BYTES = 3 * 2 * BLOCK     # fbank, a frame and json: a header and a block each


def read_columns(path: str | os.PathLike, columns: list[str] | None, *, max_rows: int,
                 max_bytes: int):
    """A pyarrow Table of `columns` (None: all) of a regular Parquet file within the bounds its
    footer declares; MetadataError naming the file otherwise."""
    import pyarrow.parquet as pq

    try:
        with open_regular(path) as handle:
            parquet = pq.ParquetFile(handle)
            meta = parquet.metadata
            if meta.num_rows > max_rows:
                raise MetadataError(f"{path} declares {meta.num_rows} rows (more than {max_rows})")
            names = set(columns) if columns is not None else None
            declared = sum(group.column(j).total_uncompressed_size
                           for group in (meta.row_group(i) for i in range(meta.num_row_groups))
                           for j in range(group.num_columns)
                           if names is None or group.column(j).path_in_schema in names)
            if declared > max_bytes:
                raise MetadataError(f"{path} declares {declared} bytes of data (more than "
                                    f"{max_bytes})")
            return parquet.read(columns=columns, use_threads=False)
    except MetadataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds on damaged files
        raise MetadataError(f"{path} is not a readable Parquet file ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None


def record_path(tar_url: str) -> str:
    return tar_url[:-4] + ".parquet"


def usable_samples(tar_url: str) -> int | None:
    """Samples with status ok, audio and video that a local shard's record lists (None: the
    shard has no record); MetadataError if the record cannot be trusted (see the module doc)."""
    import pyarrow.compute as pc

    path = record_path(tar_url)
    if not os.path.lexists(path):
        return None
    table = read_columns(path, ["status", "has_audio", "has_video"], max_rows=MAX_RECORD_ROWS,
                         max_bytes=MAX_RECORD_BYTES)
    try:
        usable = pc.and_(pc.and_(pc.equal(table["status"], STATUS_OK), table["has_audio"]),
                         table["has_video"])
        count = int(pc.sum(pc.fill_null(usable, False)).as_py() or 0)
    except Exception as e:  # noqa: BLE001 - columns of the wrong type
        raise MetadataError(f"{path}: columns status/has_audio/has_video are not a shard "
                            f"record's ({type(e).__name__}: {str(e)[:200]})") from None
    tar_bytes = os.stat(tar_url).st_size
    if count * MIN_SAMPLE_TAR_BYTES > tar_bytes:
        raise MetadataError(
            f"{path} lists {count} usable samples but {tar_url} ({tar_bytes} bytes) can hold at "
            f"most {tar_bytes // MIN_SAMPLE_TAR_BYTES}: the tar is truncated or the record is "
            "wrong; check the folder with `avsiam verify --out FOLDER`")
    return count
