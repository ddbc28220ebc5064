"""`avsiam shard`: decode clips once and write WebDataset shards (see README "Sharding")."""
from __future__ import annotations

import argparse
import errno
import shutil
import signal
import sys

from pipeline.errors import MISSING_FILE
from pipeline.frames import CROPS, SAMPLINGS
from pipeline.manifest import KINDS
from pipeline.params import CUT_TOLERANCE_S, SEGMENT_MODES, ClipParams, MediaLimits
from pipeline.plan import PlanParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults are those of the dataclasses that own them (never re-typed here).
    from pipeline.config import ShardConfig

    plan_defaults, defaults_clip, defaults_media = PlanParams(), ClipParams(), MediaLimits()
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--manifest", help="AudioSet segments CSV, VGGSound CSV, or a CSV/Parquet "
                        "with id or path, start, end, labels; omit to take every file in --videos")
    inputs.add_argument("--manifest-format", choices=KINDS, default="auto")
    inputs.add_argument("--labels", help="class_labels_indices.csv (or one label per line); "
                        "default: the sorted labels of the manifest")
    inputs.add_argument("--videos", required=True, help="folder of media files; every file a "
                        "row names must lie in it ('/' allows any absolute path)")
    inputs.add_argument("--template", default=plan_defaults.template,
                        help="file name under --videos: {ytid} {id} {start} {end} {start_ms} "
                        "{end_ms}, e.g. '{ytid}_{start:06d}.mp4'")
    inputs.add_argument("--extensions", default=",".join(plan_defaults.extensions),
                        help="extensions tried in order")
    inputs.add_argument("--select-split", help="keep only rows of this manifest split "
                        "(VGGSound: train or test; required there, 'all' keeps both)")
    inputs.add_argument("--clip-seconds", type=float,
                        help="window length for rows without an end (default: whole file)")
    inputs.add_argument("--segments", choices=SEGMENT_MODES, default="auto",
                        help="full: files are whole videos, the manifest window is seeked in "
                        "them; cut: each file is already its segment (decoded from 0); auto: "
                        f"per file, cut when its duration is within {CUT_TOLERANCE_S:g} s of the "
                        "window length (or shorter than the window), else seek")
    inputs.add_argument("--min-coverage", type=float, default=defaults_clip.min_coverage,
                        help="least fraction of a window that must decode; shorter windows fail "
                        "as short_window, longer ones are kept with their coverage recorded")
    inputs.add_argument("--allow-missing", action="store_true",
                        help="go on even when none of the first rows has its file under --videos")

    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, help="output folder (one per split)")
    output.add_argument("--split", default=plan_defaults.split, help="split name in shard file names")
    output.add_argument("--samples-per-shard", type=int, default=plan_defaults.samples_per_shard)
    output.add_argument("--max-shard-bytes", type=int, default=plan_defaults.max_shard_bytes,
                        help="hard cap per tar, planned with true worst-case sample sizes "
                        "(a row that alone could pass it is refused, naming the bound)")
    output.add_argument("--num-frames", type=int, default=defaults_clip.num_frames)
    output.add_argument("--frame-size", type=int, default=defaults_clip.frame_size)
    output.add_argument("--frame-crop", choices=CROPS, default=defaults_clip.frame_crop,
                        help="center: short side resized to --frame-size (bicubic) then centre "
                        "crop, as CAV-MAE (default); squash: the whole picture resized to a "
                        "square, as AVSiam's own loaders")
    output.add_argument("--frame-sampling", choices=SAMPLINGS,
                        default=defaults_clip.frame_sampling,
                        help="cavmae: frames at int(i * total / N) (default); avsiam: "
                        "floor(linspace(s, total - 1, N)), s in 0..4 fixed per clip from its key")
    output.add_argument("--jpeg-quality", type=int, default=defaults_clip.jpeg_quality)
    output.add_argument("--keep-single-modality", action="store_true",
                        help="keep audio-only / video-only clips (recorded per sample)")

    limits = parser.add_argument_group("limits (bad input)")
    limits.add_argument("--max-window-seconds", type=float,
                        default=defaults_clip.max_window_seconds)
    limits.add_argument("--max-pixels", type=int, default=defaults_clip.max_pixels)
    limits.add_argument("--max-source-hours", type=float,
                        default=defaults_clip.max_source_seconds / 3600)
    limits.add_argument("--probe-timeout", type=float, default=defaults_media.probe_timeout_s)
    limits.add_argument("--decode-timeout", type=float, default=defaults_media.decode_timeout_s)
    limits.add_argument("--ffmpeg-threads", type=int, default=defaults_media.ffmpeg_threads)
    limits.add_argument("--ffmpeg-memory-mb", type=int, default=defaults_media.ffmpeg_memory_mb)

    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    run.add_argument("--decode-batch", type=int, default=ShardConfig.decode_batch,
                     help="rows each worker decodes with one ffmpeg process (one start-up "
                     "instead of several; 1: a process per row); same shards either way")
    run.add_argument("--task-index", type=int, help="this task's index in a SLURM array "
                     "(default: $SLURM_ARRAY_TASK_ID)")
    run.add_argument("--num-tasks", type=int, help="tasks in the array "
                     "(default: $SLURM_ARRAY_TASK_COUNT)")
    run.add_argument("--retry-failed", action="store_true",
                     help="re-decode the failed rows of committed shards")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    from pipeline.config import ShardConfig
    from pipeline.workers import default_workers

    plan = PlanParams(split=args.split, samples_per_shard=args.samples_per_shard,
                      max_shard_bytes=args.max_shard_bytes, template=args.template,
                      extensions=tuple(args.extensions.split(",")),
                      clip_seconds=args.clip_seconds)
    clip = ClipParams(num_frames=args.num_frames, frame_size=args.frame_size,
                      frame_crop=args.frame_crop, frame_sampling=args.frame_sampling,
                      jpeg_quality=args.jpeg_quality,
                      keep_single_modality=args.keep_single_modality,
                      max_window_seconds=args.max_window_seconds, max_pixels=args.max_pixels,
                      max_source_seconds=args.max_source_hours * 3600,
                      segments=args.segments, min_coverage=args.min_coverage)
    limits = MediaLimits(probe_timeout_s=args.probe_timeout, decode_timeout_s=args.decode_timeout,
                         ffmpeg_threads=args.ffmpeg_threads,
                         ffmpeg_memory_mb=args.ffmpeg_memory_mb)
    return ShardConfig(out=args.out, videos=args.videos, manifest=args.manifest,
                       manifest_format=args.manifest_format, labels=args.labels,
                       select_split=args.select_split, plan=plan, clip=clip, limits=limits,
                       workers=args.workers or default_workers(), task_index=args.task_index,
                       num_tasks=args.num_tasks, retry_failed=args.retry_failed,
                       allow_missing=args.allow_missing, progress=not args.no_progress,
                       decode_batch=args.decode_batch)


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _exit_on_term(signum, frame) -> None:
    """Unwind (workers killed, partial shard left uncommitted for the next run) and exit 143."""
    raise SystemExit(128 + signum)


def main(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from pipeline.labels import LabelsError
    from pipeline.manifest import ManifestError
    from pipeline.output_files import OutputError
    from pipeline.params import ParamsError
    from pipeline.plan import PlanMismatch
    from pipeline.preflight import PreflightError
    from pipeline.runner import run

    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        print(f"avsiam shard: {' and '.join(missing)} not found on PATH; install ffmpeg "
              f"(Debian: apt-get install ffmpeg)", file=sys.stderr)
        return 2
    if args.ffmpeg_memory_mb > 0 and shutil.which("prlimit") is None:
        print("avsiam shard: prlimit (util-linux) not found on PATH; it applies --ffmpeg-memory-mb "
              "to each ffmpeg (Debian: apt-get install util-linux), or pass --ffmpeg-memory-mb 0",
              file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _exit_on_term)  # SLURM's warning, scancel
    try:
        summary = run(config_from_args(args))
    except (ConfigError, LabelsError, ManifestError, ParamsError, PlanMismatch,
            PreflightError, OutputError) as exc:
        print(f"avsiam shard: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        print(f"avsiam shard: {OutputError(exc.filename or args.out, exc)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    done = "all shards committed, dataset.json written" if summary.dataset_json else \
        "other shards still to do (other tasks, or re-run)"
    print(f"avsiam shard: {summary.shards_written} shard(s) written, {summary.shards_skipped} "
          f"already committed; {summary.ok} ok, {summary.failed} failed rows this run; {done}")
    return _report_totals(summary.task_totals, args)


def _report_totals(totals: dict, args: argparse.Namespace) -> int:
    """Print the missing-file fraction of this task's shards; 1 when none of their rows is ok."""
    rows, failures = totals["rows"], totals["failures"]
    if not rows:
        return 0
    whose = "" if totals["num_tasks"] == 1 else " of this task's shards"
    missing = failures.get(MISSING_FILE, 0)
    others = ", ".join(f"{code} {n}" for code, n in failures.most_common() if code != MISSING_FILE)
    print(f"avsiam shard: missing files: {missing} of {rows} rows{whose} "
          f"({100 * missing / rows:.1f}%; AudioSet and VGGSound downloads typically miss 15-20%)"
          + (f"; other failures: {others}" if others else ""))
    if totals["ok"] == 0:
        print(f"avsiam shard: none of the {rows} rows{whose} became a sample; each row's reason "
              f"is in the records {args.out}/*.parquet (fix the inputs, then re-run with "
              f"--retry-failed)", file=sys.stderr)
        return 1
    return 0
