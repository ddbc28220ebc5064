"""Is a saved checkpoint intact? complete.json records every file's size; resume checks them.

`record_files(folder)` lists the files DeepSpeed wrote (relative path -> bytes), stored in
complete.json as `files` when the save completes. `checkpoint_problem(folder)` says what is wrong
with a checkpoint (complete.json unreadable or missing its fields, a listed file missing, of
another size, or unreadable), or None when it is intact. Checkpoints written before sizes were
recorded are checked for their marker only.
"""
from __future__ import annotations

import json
from pathlib import Path

COMPLETE = "complete.json"
MARKER_FIELDS = ("step", "world_size", "zero_stage")


def record_files(folder: Path) -> dict[str, int]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != COMPLETE and not p.name.endswith(".tmp")}


def marker_problem(marker) -> str | None:
    if not isinstance(marker, dict):
        return f"{COMPLETE} is unreadable"
    missing = [k for k in MARKER_FIELDS if not isinstance(marker.get(k), int) or isinstance(marker.get(k), bool)]
    if missing:
        return f"{COMPLETE} lacks {', '.join(missing)}"
    files = marker.get("files")
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(k, str) and isinstance(v, int) for k, v in files.items())):
        return f"{COMPLETE} has an unreadable file list"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with the checkpoint in `folder` (see the module doc), or None."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except FileNotFoundError:
        return f"no {COMPLETE} (an interrupted save?)"
    except (OSError, ValueError):
        marker = None
    problem = marker_problem(marker)
    if problem is not None:
        return problem
    for name, size in (marker.get("files") or {}).items():
        path = folder / name
        try:
            actual = path.stat().st_size
            with open(path, "rb") as handle:
                handle.read(1)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror})"
        if actual != size:
            return f"{name} has {actual} bytes, {COMPLETE} records {size}"
    return None
