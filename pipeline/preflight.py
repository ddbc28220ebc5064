"""Before a job writes anything: do the planned rows find their files under --videos?

A wrong --videos or --template would otherwise turn every row into a committed `missing_file`
record. If none of the first `PREFLIGHT_ROWS` rows of the plan (all rows, if fewer) has any of its
candidate files, the job stops with a message naming --videos, --template, one expected path and
a few names that do exist there; `--allow-missing` goes on anyway. Only `stat` calls, no file is
opened. Every task of an array checks the same rows, so all of them decide alike.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.plan import Plan, candidates

PREFLIGHT_ROWS = 200
_SHOWN_NAMES = 5
_SCANNED_NAMES = 10_000


class PreflightError(ValueError):
    """No planned row finds its file; the message names the flags to fix."""


def check_files(plan: Plan, videos: Path, allow_missing: bool) -> None:
    """Raise PreflightError unless one of the first rows has a file (or `allow_missing`)."""
    params = plan.meta["plan_params"]
    extensions = tuple(params["extensions"])
    names = plan.table.column("path").slice(0, PREFLIGHT_ROWS).to_pylist()
    for name in names:
        if any(os.path.exists(os.path.join(videos, c)) for c in candidates(name, extensions)):
            return
    if allow_missing or not names:
        return
    first = candidates(names[0], extensions)
    expected = next((c for c in first if c.rpartition(".")[2].lower() in extensions), first[0])
    raise PreflightError(
        f"none of the first {len(names)} rows finds its file under --videos {videos} (e.g. "
        f"{Path(videos, expected)}, from --template {params['template']!r} and --extensions "
        f"{','.join(extensions)}); {_what_is_there(Path(videos))}. Fix --videos or --template "
        f"(files named like VGGSound's: --template '{{ytid}}_{{start:06d}}.mp4'), or pass "
        f"--allow-missing to shard anyway")


def _what_is_there(folder: Path) -> str:
    """A few names that exist in `folder` (sorted among the first thousands), or why none."""
    if not folder.exists():
        return f"{folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    found: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            found.append(entry.name + ("/" if entry.is_dir() else ""))
            if len(found) >= _SCANNED_NAMES:
                break
    if not found:
        return f"{folder} is empty"
    more = f"{len(found)}" if len(found) < _SCANNED_NAMES else f"more than {len(found)}"
    return f"it holds {more} entries, e.g. {', '.join(sorted(found)[:_SHOWN_NAMES])}"
