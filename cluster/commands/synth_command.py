"""`avsiam synth`: write the built-in synthetic audio-visual dataset."""
from __future__ import annotations

import argparse
import os
import sys
import time

from pipeline.synth.config import SynthConfig, SynthConfigError, parse_formats, parse_size
from pipeline.synth.encode import FORMATS, EncodeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (a re-run resumes it)")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--classes", type=int, required=True, help="number of classes")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip duration")
    parser.add_argument("--size", default="320x240", help="frame size WIDTHxHEIGHT (even numbers)")
    parser.add_argument("--formats", default="mp4",
                        help=f"comma-separated containers, used in turn: {', '.join(FORMATS)}")
    parser.add_argument("--fps", type=int, default=25, help="video frame rate")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel encoders (the output does not depend on it)")
    parser.add_argument("--multi-label-fraction", type=float, default=0.15,
                        help="fraction of clips with two classes (shown and heard together)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of each class's clips in the test split")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(out=args.out, clips=args.clips, classes=args.classes, seed=args.seed,
                       seconds=args.seconds, size=parse_size(args.size),
                       formats=parse_formats(args.formats), fps=args.fps, workers=args.workers,
                       multi_label_fraction=args.multi_label_fraction,
                       test_fraction=args.test_fraction)


def main(args: argparse.Namespace) -> int:
    from pipeline.synth.dataset import write_dataset

    try:
        config = config_from_args(args)
        started = time.perf_counter()
        summary = write_dataset(config)
    except (SynthConfigError, EncodeError) as error:
        print(f"avsiam synth: error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    clips = summary["clips"]
    test = sum(c["split"] == "test" for c in clips)
    multi = sum(len(c["labels"]) > 1 for c in clips)
    print(f"avsiam synth: {len(clips)} clips ({summary['made']} made, {summary['reused']} already "
          f"there) of {config.classes} classes in {seconds:.1f} s -> {summary['videos_dir']}")
    print(f"  {len(clips) - test} train / {test} test, {multi} with two labels, "
          f"{config.seconds:g} s at {config.size[0]}x{config.size[1]}, {config.fps} fps, "
          f"formats {','.join(config.formats)}")
    for key in ("balanced_train_csv", "eval_csv", "labels_csv", "vggsound_csv", "synth_json"):
        print(f"  {key:<19} {summary[key]}")
    return 0
