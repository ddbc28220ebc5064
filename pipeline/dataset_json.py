"""`dataset.json`: dataset-level counts, failure reasons, parameters and fbank statistics.

Built only from manifest.parquet's metadata and the committed shards' stats files, in shard
order, with no timestamps: whichever run writes it (the last sharding task, or `avsiam stats`)
writes the same bytes. It is written under the folder's dataset lock, from stats read under that
lock, and only when its bytes change: concurrent runs that both finish write it once.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.locks import FolderLocks
from pipeline.output_files import remove_temps, write_atomic
from pipeline.plan import Plan
from pipeline.shard_writer import committed_stats, identity
from pipeline.stats import Moments, combine_all
from shards import format as fmt


def shard_files(out_dir: Path, plan: Plan) -> list[fmt.ShardFiles]:
    return [fmt.ShardFiles.of(out_dir, plan.split, k) for k in range(plan.num_shards)]


def committed(out_dir: Path, plan: Plan) -> list[dict] | None:
    """Every shard's stats in shard order, or None while any shard is not committed (by this
    plan)."""
    ident = identity(plan.split, plan.meta["plan_hash"], plan.meta["params_hash"])
    stats = []
    for files in shard_files(out_dir, plan):
        item = committed_stats(files, ident)
        if item is None:
            return None
        stats.append(item)
    return stats


def build(plan: Plan, stats: list[dict], fbank: Moments | None = None) -> dict:
    """The dataset.json content from the shards' stats; `fbank` overrides the moments summed
    from the stats files."""
    failures: Counter = Counter()
    for item in stats:
        failures.update(item["failures"])
    if fbank is None:
        fbank = combine_all(Moments.from_dict(item["fbank"]) for item in stats)
    meta = plan.meta
    return {
        "format_version": fmt.FORMAT_VERSION,
        "pipeline_version": meta["clip_params"]["pipeline_version"],
        "split": plan.split,
        "shards": fmt.brace_pattern(".", plan.split, plan.num_shards).removeprefix("./"),
        "num_shards": plan.num_shards,
        "counts": {
            "rows": sum(s["rows"] for s in stats),
            "ok": sum(s["ok"] for s in stats),
            "failed": sum(s["failed"] for s in stats),
            "with_audio": sum(s["with_audio"] for s in stats),
            "with_video": sum(s["with_video"] for s in stats),
            "tar_bytes": sum(s["tar_bytes"] for s in stats),
        },
        "failure_reasons": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "fbank_stats": {"count": fbank.count, "mean": fbank.mean, "std": fbank.std,
                        "m2": fbank.m2},
        "normalization": {"mean": fbank.mean, "std": fbank.std,
                          "cav_mae_mean": fmt.DEFAULT_FBANK_MEAN,
                          "cav_mae_std": fmt.DEFAULT_FBANK_STD},
        "params_hash": meta["params_hash"],
        "plan_hash": meta["plan_hash"],
        "params": meta["clip_params"],
        "plan_params": meta["plan_params"],
        "manifest_kind": meta["manifest_kind"],
        "videos": meta.get("videos"),
        "labels": meta["vocabulary"],
    }


def write_if_complete(out_dir: Path, plan: Plan, fbank: Moments | None = None) -> bool | None:
    """Write dataset.json if every shard is committed: None if one is not, True if written, False
    if it already held these bytes. Holds the dataset lock while
    reading the stats and writing, so a later commit's dataset.json is never overwritten by an
    older one; unchanged bytes are not rewritten."""
    out_dir = Path(out_dir)
    path = out_dir / fmt.DATASET_JSON
    with FolderLocks(out_dir).dataset():
        remove_temps(out_dir, {path.name})          # a killed writer's; we hold the lock
        stats = committed(out_dir, plan)
        if stats is None:
            return None
        data = (json.dumps(build(plan, stats, fbank), indent=1) + "\n").encode()
        try:
            unchanged = path.read_bytes() == data
        except OSError:
            unchanged = False
        if not unchanged:
            write_atomic(path, data)
    return not unchanged
