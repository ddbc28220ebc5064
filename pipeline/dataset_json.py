"""`dataset.json`: dataset-level counts, failure reasons, parameters and fbank statistics.

Built only from manifest.parquet's metadata and the committed shards' stats files, in shard
order, with no timestamps: whichever run writes it (the last sharding task, or `avsiam stats`)
writes the same bytes.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from pipeline.plan import Plan
from pipeline.shard_writer import is_committed, read_stats, temp_path
from pipeline.stats import Moments, combine_all
from shards import format as fmt


def shard_files(out_dir: Path, plan: Plan) -> list[fmt.ShardFiles]:
    return [fmt.ShardFiles.of(out_dir, plan.split, k) for k in range(plan.num_shards)]


def all_committed(out_dir: Path, plan: Plan) -> bool:
    return all(is_committed(files) for files in shard_files(out_dir, plan))


def build(out_dir: Path, plan: Plan, fbank: Moments | None = None) -> dict:
    """The dataset.json content; `fbank` overrides the moments summed from the stats files."""
    stats = [read_stats(files) for files in shard_files(out_dir, plan)]
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


def write(out_dir: Path, content: dict) -> Path:
    """Write dataset.json atomically."""
    path = Path(out_dir) / fmt.DATASET_JSON
    temp = temp_path(path).with_name(f"{path.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(content, indent=1) + "\n")
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    return path
