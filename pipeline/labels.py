"""The label vocabulary: label id (AudioSet mid / VGGSound label string) <-> class index.

Read from `class_labels_indices.csv` (header `index,mid,display_name`), from a CSV with a `label`
or `name` column, or from a text file with one label per line; or derived from the manifest
(sorted unique labels) when no file is given.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


class LabelsError(ValueError):
    """A labels file or a label that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Vocabulary:
    ids: tuple[str, ...]
    names: tuple[str, ...]
    source: str
    """Where it came from: the labels file name, or "manifest" when derived."""

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, label in enumerate(self.ids):
            if label in seen:
                raise LabelsError(f"label {label!r} appears twice in {self.source} "
                                  f"(indices {seen[label]} and {i})")
            seen[label] = i
        object.__setattr__(self, "_index", seen)

    def index_of(self, label: str) -> int | None:
        return self._index.get(label)

    def indices(self, labels: tuple[str, ...]) -> tuple[int, ...]:
        """Class indices of `labels`; KeyError for a label not in the vocabulary."""
        return tuple(map(self._index.__getitem__, labels))

    def unknown(self, labels) -> list[str]:
        return [label for label in labels if label not in self._index]

    def as_dict(self) -> dict:
        return {"source": self.source, "num_classes": len(self.ids),
                "ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        return cls(tuple(data["ids"]), tuple(data["names"]), data["source"])


def read_labels(path: str | Path) -> Vocabulary:
    """A vocabulary from class_labels_indices.csv, a label/name CSV, or one label per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc.strerror}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise LabelsError(f"labels file {path} is empty")
    header = [h.strip().lower() for h in next(csv.reader([lines[0]]))]
    if "mid" in header or "label" in header or "name" in header:
        return _from_csv(path, lines, header)
    labels = tuple(line.strip() for line in lines)
    return Vocabulary(labels, labels, path.name)


def _from_csv(path: Path, lines: list[str], header: list[str]) -> Vocabulary:
    id_col = next(c for c in ("mid", "label", "name") if c in header)
    name_col = next((c for c in ("display_name", "name", "label") if c in header), id_col)
    rows = list(csv.DictReader(lines, fieldnames=header, skipinitialspace=True))[1:]
    if "index" in header:
        try:
            rows.sort(key=lambda row: int(row["index"]))
        except (TypeError, ValueError):
            raise LabelsError(f"labels file {path}: the index column must hold integers") from None
        indices = [int(row["index"]) for row in rows]
        if indices != list(range(len(rows))):
            raise LabelsError(f"labels file {path}: indices must be 0..{len(rows) - 1} "
                              f"without gaps")
    ids = tuple((row[id_col] or "").strip() for row in rows)
    names = tuple((row[name_col] or "").strip() for row in rows)
    if any(not label for label in ids):
        raise LabelsError(f"labels file {path}: empty {id_col!r} value")
    return Vocabulary(ids, names, path.name)


def vocabulary_from(label_lists) -> Vocabulary:
    """Sorted unique labels of the manifest (used when no labels file is given)."""
    labels = tuple(sorted({label for labels in label_lists for label in labels}))
    return Vocabulary(labels, labels, "manifest")
