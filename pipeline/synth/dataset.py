"""`write_dataset`: make every clip (in parallel, resumable) and write the metadata."""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from pipeline.progress import clip_progress
from pipeline.synth.classes import make_classes
from pipeline.synth.clip import VIDEOS_DIR, clip_path, make_clip
from pipeline.synth.config import SynthConfig, SynthConfigError
from pipeline.synth.metadata import (CLAIM_JSON, SYNTH_JSON, synth_json, write_atomic,
                                     write_metadata)
from pipeline.synth.plan import ClipPlan, make_plan


def _claim(config: SynthConfig, text: str) -> None:
    """Refuse a folder holding a dataset made with other parameters; record ours while we work."""
    out = Path(config.out)
    for path in (out / SYNTH_JSON, out / CLAIM_JSON):
        if not path.exists():
            continue
        try:
            found = json.loads(path.read_text(encoding="utf-8")).get("parameters")
        except (OSError, ValueError, AttributeError) as error:
            raise SynthConfigError(f"{path} is unreadable ({error}); delete it or use another --out")
        if found != json.loads(text)["parameters"]:
            raise SynthConfigError(
                f"{config.out} already holds a synthetic dataset made with {found}, not "
                f"{config.identity()}; use another --out or delete that folder")
    write_atomic(out / CLAIM_JSON, text)


def _remove_temporaries(folder: Path) -> None:
    """Remove what an interrupted run may have left: hidden .partial and .wav files."""
    for pattern in (".*.partial", ".*.wav"):
        for leftover in folder.glob(pattern):
            leftover.unlink(missing_ok=True)


def _make_all(config: SynthConfig, todo: list[ClipPlan], bar) -> None:
    if config.workers == 1 or len(todo) <= 1:
        for plan in todo:
            make_clip(config, plan)
            bar.update()
        return
    # fork: works from any caller, even a script without a `__main__` guard; the children only
    # run numpy and ffmpeg subprocesses, so no inherited lock (torch, BLAS) is touched.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=min(config.workers, len(todo)), mp_context=context) as pool:
        pending = {pool.submit(make_clip, config, plan) for plan in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # raises the clip's error
                    bar.update()
        except BaseException:  # an error or Ctrl-C: start no new clip, let running ones end
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def write_dataset(config: SynthConfig, progress: bool = True) -> dict:
    """Make the dataset in `config.out`; a re-run with the same parameters finishes what is missing.

    Returns a summary: the paths of the videos folder and CSVs, and one entry per clip with its
    ytid, path, labels (mids, primary first), split and format.
    """
    out = Path(config.out)
    videos = out / VIDEOS_DIR
    videos.mkdir(parents=True, exist_ok=True)
    recipes = make_classes(config.classes)
    plans = make_plan(config)
    description = synth_json(config, recipes, plans)
    _claim(config, description)
    todo = [plan for plan in plans if not clip_path(config, plan).exists()]
    with clip_progress(len(plans), initial=len(plans) - len(todo), desc="avsiam synth",
                       enabled=progress) as bar:
        _make_all(config, todo, bar)
    _remove_temporaries(videos)
    _remove_temporaries(out)
    paths = write_metadata(config, recipes, plans)
    write_atomic(out / SYNTH_JSON, description)  # last: the dataset is complete
    (out / CLAIM_JSON).unlink(missing_ok=True)
    clips = [{"ytid": plan.ytid, "path": str(clip_path(config, plan)),
              "labels": [recipes[c].mid for c in plan.labels], "split": plan.split,
              "format": plan.fmt} for plan in plans]
    return {"out": str(out), "videos_dir": str(videos), **paths,
            "synth_json": str(out / SYNTH_JSON), "made": len(todo),
            "reused": len(plans) - len(todo), "clips": clips}
