"""`avsiam verify`: check every shard of a split and report problems by shard and sample key."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the folder `avsiam shard --out` wrote")
    parser.add_argument("--workers", type=int, default=1, help="shards checked in parallel")
    parser.add_argument("--max-problems", type=int, default=50,
                        help="problems printed (all are counted)")
    parser.add_argument("--max-sample-bytes", type=int, default=None,
                        help="most bytes all members of one sample may claim together; a larger "
                             "sample is reported and never read (default: the loader's, 8 MiB)")


def main(args: argparse.Namespace) -> int:
    from shards.verify import verify_dataset

    from shards.format import MAX_SAMPLE_BYTES

    report = verify_dataset(args.out, workers=args.workers,
                            max_sample_bytes=args.max_sample_bytes or MAX_SAMPLE_BYTES)
    for problem in report.problems[:args.max_problems]:
        print(problem, file=sys.stderr)
    if len(report.problems) > args.max_problems:
        print(f"... {len(report.problems) - args.max_problems} more", file=sys.stderr)
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"avsiam verify: {report.shards} shards, {report.rows} rows, {report.samples} samples: "
          f"{verdict}")
    return 0 if report.ok else 1
