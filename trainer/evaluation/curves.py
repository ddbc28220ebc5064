"""Loss curves from the JSONL metrics a run writes (one JSON object per line), as one PNG.

Each file gets its own panel; every numeric field whose name contains one of the `match` words is a
curve against the step field (curves that are zero throughout, i.e. disabled losses, are left
out). Lines that are not JSON (a run killed mid-write) are counted and
skipped, never fatal.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

STEP_FIELDS = ("step", "global_step", "iteration", "it")


@dataclass
class Series:
    """The curves of one metrics file."""

    name: str
    steps: dict[str, list[float]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    bad_lines: int = 0


def read_series(path: str | Path, match: tuple[str, ...] = ("loss",),
                name: str | None = None) -> Series:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file; runs write metrics.jsonl in their folder")
    series = Series(name=name or path.parent.name or path.stem)
    for line_no, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            series.bad_lines += 1
            continue
        if not isinstance(record, dict):
            series.bad_lines += 1
            continue
        step = next((record[f] for f in STEP_FIELDS if isinstance(record.get(f), (int, float))),
                    line_no)
        for key, value in record.items():
            if key in STEP_FIELDS or not any(m in key for m in match):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                series.steps.setdefault(key, []).append(float(step))
                series.values.setdefault(key, []).append(float(value))
    return series


def draw_curves(series: list[Series], out: str | Path, width_px: int = 1200, height_px: int = 500,
                dpi: int = 120, log_y: bool = False) -> Path:
    """One panel per series, side by side; writes exactly width_px x height_px."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not series:
        raise ValueError("no metrics files given")
    empty = [s.name for s in series if not s.values]
    if len(empty) == len(series):
        raise ValueError(f"no loss values found in {', '.join(empty)}; are these metrics.jsonl files "
                         f"of a run that logged at least one step?")
    fig, axes = plt.subplots(1, len(series), figsize=(width_px / dpi, height_px / dpi), dpi=dpi,
                             squeeze=False)
    for ax, s in zip(axes[0], series):
        for key in sorted(k for k, v in s.values.items() if any(v)):  # all-zero: a disabled loss
            ax.plot(s.steps[key], s.values[key], label=key, linewidth=1.0)
        ax.set_title(s.name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if log_y and all(v > 0 for vals in s.values.values() for v in vals):
            ax.set_yscale("log")
        if s.values:
            ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out)
    return out
