"""`avsiam verify`: check every shard of a split and report problems by shard and sample key."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the folder `avsiam shard --out` wrote")
    parser.add_argument("--workers", type=int, default=1, help="shards checked in parallel")
    parser.add_argument("--max-problems", type=int, default=50,
                        help="problems printed (all are counted)")


def main(args: argparse.Namespace) -> int:
    from shards.verify import verify_dataset

    report = verify_dataset(args.out, workers=args.workers)
    for problem in report.problems[:args.max_problems]:
        print(problem, file=sys.stderr)
    if len(report.problems) > args.max_problems:
        print(f"... {len(report.problems) - args.max_problems} more", file=sys.stderr)
    verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"avsiam verify: {report.shards} shards, {report.rows} rows, {report.samples} samples: "
          f"{verdict}")
    return 0 if report.ok else 1
