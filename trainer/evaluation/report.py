"""Results as JSON (for machines) and as a fixed-width table (for people), written side by side."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    """A titled table: one row per dict, columns in the given order (missing cells show '-')."""

    title: str
    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    """Optional display names of columns."""

    def add(self, **cells) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        heads = [self.headers.get(c, c) for c in self.columns]
        body = [[format_cell(row.get(c)) for c in self.columns] for row in self.rows]
        widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(heads)]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

        rule = "-" * len(line(heads))
        return "\n".join([self.title, rule, line(heads), rule] + [line(r) for r in body] + [rule])


def format_cell(value) -> str:
    """Floats with 4 decimals (integers as such), NaN and None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def _jsonable(value):
    """NaN/inf become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, payload: dict) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def write_report(path: str | Path, payload: dict, tables: list[Table]) -> tuple[Path, Path]:
    """PATH (JSON) and PATH with suffix .txt (the rendered tables); returns both paths."""
    json_path = write_json(path, payload)
    text_path = json_path.with_suffix(".txt")
    tmp = text_path.with_name(text_path.name + ".tmp")
    tmp.write_text("\n\n".join(t.render() for t in tables) + "\n")
    os.replace(tmp, text_path)
    return json_path, text_path
