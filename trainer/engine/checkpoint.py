"""DeepSpeed checkpoints with a completion marker, auto-resume and world-size changes.

Layout under the checkpoint root:

    step_00001000/              DeepSpeed's files for that step (every rank writes its part)
    step_00001000/complete.json written by rank 0 LAST, after every rank finished saving
    step_00001000_universal/    a universal copy, made when a run resumes on another world size
                                or ZeRO stage (its own complete.json, written after conversion)

`resume=auto` takes the newest folder with complete.json; a folder without one (a save killed
half-way) is never picked and is deleted by the next prune. The client state holds the step, the
run's counters and every rank's loader state and RNG states (all-gathered: DeepSpeed writes the
client state from rank 0 only). DeepSpeed's own `latest` file is not written or used.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint_files import COMPLETE, checkpoint_problem, marker_problem, record_files
from .distributed import DistContext, barrier, on_main_rank

log = logging.getLogger("trainer.engine")
UNIVERSAL_SUFFIX = "_universal"
_TAG_RE = re.compile(r"^step_(\d{8})$")


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


@dataclass(frozen=True)
class ResumePoint:
    """A complete checkpoint to load: `root/tag`."""

    root: Path
    tag: str
    step: int
    world_size: int
    zero_stage: int
    universal: bool = False

    @property
    def path(self) -> Path:
        return self.root / self.tag


def read_marker(folder: Path) -> dict | None:
    """complete.json of `folder` when it is readable and has its fields (else None)."""
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return None
    return marker if marker_problem(marker) is None else None


def complete_checkpoints(root: Path) -> list[ResumePoint]:
    """Complete checkpoints under `root`, oldest first."""
    found = []
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        match = _TAG_RE.match(folder.name)
        marker = read_marker(folder) if match else None
        if marker is not None:
            found.append(ResumePoint(root=root, tag=folder.name, step=int(marker["step"]),
                                     world_size=int(marker["world_size"]), zero_stage=int(marker["zero_stage"])))
    return sorted(found, key=lambda p: p.step)


def find_resume_point(spec: str, root: Path, flag: str = "--resume") -> ResumePoint | None:
    """`none` -> None; `auto` -> newest complete checkpoint in `root` (None if none); a path -> that
    checkpoint folder, or the newest complete one in that root (an error naming `flag` if there is
    none)."""
    if spec == "none":
        return None
    if spec == "auto":
        return newest_intact(root, flag)
    path = Path(spec)
    if _TAG_RE.match(path.name) and (path / COMPLETE).exists():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ValueError(f"{flag} {spec}: the checkpoint is damaged: {problem}; pass an older "
                             f"step_NNNNNNNN folder or its parent folder (the newest intact one is taken)")
        return next(p for p in complete_checkpoints(path.parent) if p.tag == path.name)
    point = newest_intact(path, flag)
    if point is None:
        state = "has no complete.json (an interrupted save?)" if path.is_dir() and _TAG_RE.match(path.name) \
            else "holds no complete checkpoint"
        choices = "" if flag == "--checkpoint" else ", or `auto`"
        raise FileNotFoundError(f"{flag} {spec}: {path} {state}; pass a step_NNNNNNNN folder written "
                                f"by `avsiam pretrain` or `avsiam finetune`, its parent folder{choices}")
    return point


_WARNED: set = set()


def newest_intact(root: Path, flag: str = "--resume") -> ResumePoint | None:
    """The newest checkpoint under `root` whose files are intact (checkpoint_files.py); each newer
    damaged one is named in a warning. None when there is no checkpoint; ValueError (one line) when
    there are some and none is intact."""
    candidates = sorted((f for f in root.iterdir() if _TAG_RE.match(f.name) and (f / COMPLETE).exists()),
                        key=lambda f: f.name, reverse=True) if root.is_dir() else []
    damaged = []
    for folder in candidates:
        problem = checkpoint_problem(folder)
        if problem is None:
            point = next(p for p in complete_checkpoints(root) if p.tag == folder.name)
            for name, why in damaged:
                if (root, name) not in _WARNED:           # once per process, however often asked
                    _WARNED.add((root, name))
                    log.warning("checkpoint %s is damaged (%s); resuming from %s instead", name, why,
                                folder.name)
            return point
        damaged.append((folder.name, problem))
    if damaged:
        found = "; ".join(f"{name}: {why}" for name, why in damaged)
        fix = "start afresh with --resume none --overwrite" if flag == "--resume" else \
            "export a checkpoint of another run"
        raise ValueError(f"{flag}: no intact checkpoint in {root} ({found}); {fix}")
    return None


class Checkpointer:
    """Saves and loads a run's checkpoints; every method is called on every rank."""

    def __init__(self, root: Path, ctx: DistContext, keep: int = 3, zero_stage: int = 2) -> None:
        self.root = Path(root)
        self.ctx = ctx
        self.keep = keep
        self.zero_stage = zero_stage

    # ------------------------------------------------------------------ save
    def save(self, engine, step: int, client_state: dict[str, Any], rank_state: dict[str, Any],
             marker: dict[str, Any] | None = None) -> Path:
        """Collective save of `step`; returns its folder once it is complete on every rank.
        `marker` adds fields to complete.json (e.g. the model config, read by `avsiam export`)."""
        tag = tag_of(step)
        folder = self.root / tag
        if checkpoint_problem(folder) is None:    # e.g. the final save right after a periodic one
            return folder
        ranks = _all_gather_objects({**rank_state, "rng": capture_rng()})
        # leftovers of an interrupted save of this step
        on_main_rank(self.ctx.is_main, lambda: shutil.rmtree(folder) if folder.exists() else None)
        state = {**client_state, "step": step, "ranks": ranks}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=state, save_latest=False)
        barrier()

        def complete() -> None:
            _write_json_atomic(folder / COMPLETE, {**(marker or {}), "step": step,
                                                   "world_size": self.ctx.world_size,
                                                   "zero_stage": self.zero_stage, "time": time.time(),
                                                   "files": record_files(folder)})
            self.prune()

        on_main_rank(self.ctx.is_main, complete)
        return folder

    def prune(self) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones and incomplete leftovers."""
        points = complete_checkpoints(self.root)
        keep = {p.tag for p in (points[-self.keep:] if self.keep else points)}
        newest = points[-1].step if points else -1
        for folder in self.root.iterdir():
            base = folder.name[:-len(UNIVERSAL_SUFFIX)] if folder.name.endswith(UNIVERSAL_SUFFIX) else folder.name
            match = _TAG_RE.match(base)
            if not match or base in keep:
                continue
            if read_marker(self.root / base) is not None or int(match.group(1)) < newest:
                shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ load
    def prepare(self, point: ResumePoint) -> ResumePoint:
        """The point as this run must load it: converted to a universal checkpoint (by rank 0, once)
        when the world size or ZeRO stage differs from the saved one."""
        if point.world_size == self.ctx.world_size and point.zero_stage == self.zero_stage:
            return point
        target = point.root / (point.tag + UNIVERSAL_SUFFIX)

        def convert() -> None:
            if read_marker(target) is None:
                convert_to_universal(point.path, target)
                _write_json_atomic(target / COMPLETE, {**read_marker(point.path), "universal": True,
                                                       "files": record_files(target)})

        on_main_rank(self.ctx.is_main, convert)
        return ResumePoint(root=point.root, tag=target.name, step=point.step, world_size=point.world_size,
                           zero_stage=point.zero_stage, universal=True)

    def load(self, engine, point: ResumePoint) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Load weights and optimizer state; returns (client state, this rank's saved state or None
        when the world size changed) and restores this rank's RNG states when it has them."""
        path, client = engine.load_checkpoint(str(point.root), tag=point.tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None or client is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {point.path}")
        ranks = client.get("ranks") or []
        mine = ranks[self.ctx.rank] if len(ranks) == self.ctx.world_size else None
        if mine is not None:
            restore_rng(mine["rng"])
        return client, mine


def open_run_checkpoints(cfg, ctx: DistContext, *, same_world_size: bool = False
                         ) -> tuple[Checkpointer, ResumePoint | None]:
    """The Checkpointer of a run config (`checkpoint_dir`, `checkpoint.keep/resume`,
    `deepspeed.zero_stage`) and the point it resumes from, prepared for loading (None: fresh start).
    `same_world_size`: refuse a checkpoint written by another number of ranks."""
    checkpointer = Checkpointer(cfg.checkpoint_dir, ctx, cfg.checkpoint.keep, cfg.deepspeed.zero_stage)
    point = find_resume_point(cfg.checkpoint.resume, cfg.checkpoint_dir)
    if point is None:
        return checkpointer, None
    if same_world_size and point.world_size != ctx.world_size:
        raise RuntimeError(f"{point.path} was written by {point.world_size} ranks; this run resumes "
                           f"on the same number of ranks only (here {ctx.world_size})")
    return checkpointer, checkpointer.prepare(point)


def convert_to_universal(source: Path, target: Path) -> None:
    """DeepSpeed's ds_to_universal, into a temporary folder renamed when done."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
           "--num_merge_workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=6 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"converting {source} to a universal checkpoint failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    (target.parent / "latest_universal").unlink(missing_ok=True)   # the converter's pointer; unused


# --- RNG --------------------------------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": _numpy_state_to_plain(np.random.get_state()),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _numpy_state_to_plain(state) -> list:
    kind, keys, pos, has_gauss, gauss = state
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _tuples(obj):
    return tuple(_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


# --- helpers ----------------------------------------------------------------------------------------

def _all_gather_objects(obj: Any) -> list[Any]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
