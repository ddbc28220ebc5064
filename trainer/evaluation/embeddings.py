"""Embedding tables in Parquet: one row per clip with key, labels and the audio and visual vectors.

Columns: key (string), labels (list<int32>, class indices), audio and visual (fixed_size_list<float32>
of the model width; null where the clip lacks that modality). File metadata carries the model and
the protocol (which frame, normalised or not) as JSON under b"avsiam".
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"avsiam"


class EmbeddingFileError(ValueError):
    """An embedding file that cannot be read as this format; the message names the file."""


@dataclass
class EmbeddingTable:
    """Embeddings of N clips in memory; rows of a modality a clip lacks are NaN."""

    keys: list[str]
    labels: list[list[int]]
    audio: np.ndarray
    visual: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if len(self.labels) != n or len(self.audio) != n or len(self.visual) != n:
            raise EmbeddingFileError(f"{n} keys but {len(self.labels)} label lists, {len(self.audio)} "
                                     f"audio and {len(self.visual)} visual vectors")

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices: Sequence[int]) -> "EmbeddingTable":
        idx = np.asarray(indices, dtype=np.int64)
        return EmbeddingTable([self.keys[i] for i in idx], [self.labels[i] for i in idx],
                              self.audio[idx], self.visual[idx], dict(self.metadata))

    def complete(self) -> "EmbeddingTable":
        """Only the clips with both an audio and a visual vector."""
        ok = ~(np.isnan(self.audio).any(axis=1) | np.isnan(self.visual).any(axis=1))
        return self.subset(np.flatnonzero(ok))


def _vectors(values: np.ndarray, width: int) -> pa.Array:
    values = np.asarray(values, dtype=np.float32)
    missing = np.isnan(values).any(axis=1)
    flat = pa.array(np.nan_to_num(values).reshape(-1), type=pa.float32())
    arr = pa.FixedSizeListArray.from_arrays(flat, width)
    if missing.any():
        arr = pa.FixedSizeListArray.from_arrays(flat, width, mask=pa.array(missing))
    return arr


def write_embeddings(path: str | Path, table: EmbeddingTable) -> Path:
    """Write atomically (temp file + rename)."""
    path = Path(path)
    width_a, width_v = table.audio.shape[1], table.visual.shape[1]
    arrow = pa.table({
        "key": pa.array(table.keys, type=pa.string()),
        "labels": pa.array([[int(c) for c in l] for l in table.labels], type=pa.list_(pa.int32())),
        "audio": _vectors(table.audio, width_a),
        "visual": _vectors(table.visual, width_v),
    }).replace_schema_metadata({METADATA_KEY: json.dumps(table.metadata).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(arrow, tmp)
    os.replace(tmp, path)
    return path


def _matrix(column: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    if not pa.types.is_fixed_size_list(column.type):
        raise EmbeddingFileError(f"{path}: column {name!r} is {column.type}, expected fixed-size "
                                 f"float vectors; was the file written by `avsiam embed`?")
    width = column.type.list_size
    rows = np.full((len(column), width), np.nan, dtype=np.float32)
    offset = 0
    for chunk in column.chunks:
        valid = ~np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        block = rows[offset:offset + len(chunk)]
        block[valid] = values if len(values) == valid.sum() else values[valid]
        offset += len(chunk)
    return rows


def read_embeddings(path: str | Path) -> EmbeddingTable:
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"{path}: no such embedding file; write one with `avsiam embed`")
    arrow = pq.read_table(path)
    missing = {"key", "labels", "audio", "visual"} - set(arrow.column_names)
    if missing:
        raise EmbeddingFileError(f"{path}: missing columns {sorted(missing)}")
    meta = (arrow.schema.metadata or {}).get(METADATA_KEY, b"{}")
    return EmbeddingTable(keys=arrow.column("key").to_pylist(),
                          labels=[list(l or []) for l in arrow.column("labels").to_pylist()],
                          audio=_matrix(arrow.column("audio"), path, "audio"),
                          visual=_matrix(arrow.column("visual"), path, "visual"),
                          metadata=json.loads(meta))
