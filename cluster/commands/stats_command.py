"""`avsiam stats`: exact fbank mean/std over all shards (streaming) into dataset.json.

Reads every fbank of every committed shard, combines the moments in shard and row order (so the
result is the same bits whatever --workers), checks them against the shards' stats files, and
rewrites dataset.json with them.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the folder `avsiam shard --out` wrote")
    parser.add_argument("--workers", type=int, default=1, help="shards read in parallel")


def main(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from pipeline import dataset_json
    from pipeline.output_files import OutputError
    from pipeline.plan import PlanMismatch, read_plan
    from pipeline.stats import Moments, combine_all, shard_moments

    out = Path(args.out)
    try:
        plan = read_plan(out)
    except (OSError, PlanMismatch) as exc:
        print(f"avsiam stats: no sharding plan in {out} ({exc}); run `avsiam shard` first",
              file=sys.stderr)
        return 2
    files = dataset_json.shard_files(out, plan)
    stats = dataset_json.committed(out, plan)
    if stats is None:
        from pipeline.shard_writer import committed_stats
        missing = [f.stats.name for f in files if committed_stats(f) is None]
        print(f"avsiam stats: {len(missing)} shard(s) not committed (e.g. {missing[0]}); finish "
              f"`avsiam shard` first (a re-run redoes them)", file=sys.stderr)
        return 2
    tars = [str(f.tar) for f in files]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            per_shard = list(pool.map(shard_moments, tars))
    else:
        per_shard = [shard_moments(t) for t in tars]
    mismatched = [f.tar.name for f, item, m in zip(files, stats, per_shard)
                  if Moments.from_dict(item["fbank"]) != m]
    total = combine_all(per_shard)
    try:
        if dataset_json.write_if_complete(out, plan, fbank=total) is None:
            print(f"avsiam stats: a shard of {out} was un-committed meanwhile (a run with "
                  f"--retry-failed?); run `avsiam stats` again when it is done", file=sys.stderr)
            return 2
    except OutputError as exc:
        print(f"avsiam stats: {exc}", file=sys.stderr)
        return 2
    print(f"avsiam stats: fbank mean {total.mean:.6f}, std {total.std:.6f} over {total.count} "
          f"values in {len(tars)} shards -> {out / 'dataset.json'}")
    if mismatched:
        print(f"avsiam stats: {len(mismatched)} shard(s) differ from their stats file (changed "
              f"after commit?): {', '.join(mismatched[:5])}; run `avsiam verify`", file=sys.stderr)
        return 1
    return 0
