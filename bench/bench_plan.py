"""Planning time of `avsiam shard` on AudioSet-sized manifests (no decoding).

- dup20k: a segments CSV of 20,000 rows with one repeated YTID (same start), planned through
  `pipeline.runner.make_plan` (read the CSV, vocabulary, keys, shards, write manifest.parquet);
  baseline: the previous duplicate-key search (quadratic: each copy re-scanned every suffix handed
  out before it) on the same ids, timed alone.
- rows2m: a 2,000,000-row CSV shaped like unbalanced_train_segments.csv (three '#' lines, 11-char
  ids starting with '-' or letters, windows at multiples of 10 s, 1-4 quoted mids out of 527),
  planned from scratch, then the re-run's fast path (fingerprint + stored plan).

Wall and CPU seconds are reported (CPU: this process; the work is single-threaded).

Each figure is the median of --repeats runs.

    .venv/bin/python bench/bench_plan.py --repeats 3 --work /tmp/bench_plan
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import string
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import ShardConfig  # noqa: E402
from pipeline.plan import PlanParams  # noqa: E402
from pipeline.runner import make_plan  # noqa: E402
from shards import format as fmt  # noqa: E402

_ID_CHARS = string.ascii_letters + string.digits + "-_"


def write_segments(path: Path, ids: list[str], starts: list[int], labels: list[str]) -> None:
    with open(path, "w") as handle:
        handle.write("# Segments csv created by bench_plan\n# num_ytids=0\n"
                     "# YTID, start_seconds, end_seconds, positive_labels\n")
        handle.writelines(f'{i}, {s:.3f}, {s + 10:.3f}, "{label}"\n'
                          for i, s, label in zip(ids, starts, labels))


def write_labels(path: Path, mids: list[str]) -> None:
    path.write_text("index,mid,display_name\n" + "".join(f'{k},{m},"class {k}"\n'
                                                         for k, m in enumerate(mids)))


def quadratic_unique_keys(source_ids, starts):
    """The duplicate-key search before issue 13 (the baseline)."""
    keys = [fmt.sample_key(s, t) for s, t in zip(source_ids, starts)]
    taken = set(keys)
    seen: set[str] = set()
    out = []
    for key in keys:
        if key in seen:
            n = 1
            while f"{key}-{n}" in taken:
                n += 1
            key = f"{key}-{n}"
            taken.add(key)
        seen.add(key)
        out.append(key)
    return out


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(); the work is single-threaded, so on a
    shared machine the CPU time is the stable figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def plan_once(manifest: Path, labels: Path, videos: Path, out: Path,
              fresh: bool) -> tuple[float, float]:
    if fresh and out.exists():
        shutil.rmtree(out)
    cfg = ShardConfig(out=out, videos=videos, manifest=manifest, labels=labels,
                      plan=PlanParams(), allow_missing=True, progress=False)
    return timed(lambda: make_plan(cfg))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--duplicates", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_plan"))
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "videos").mkdir(exist_ok=True)
    rng = random.Random(0)
    mids = [f"/m/{k:05x}" for k in range(527)]
    write_labels(work / "labels.csv", mids)

    dup = work / "dup_segments.csv"
    write_segments(dup, ["-0RWZT-miFs"] * args.duplicates, [30] * args.duplicates,
                   [mids[0]] * args.duplicates)
    big = work / "unbalanced_segments.csv"
    if not big.exists():
        ids = ["".join(rng.choice(_ID_CHARS) for _ in range(11)) for _ in range(args.rows)]
        starts = [10 * rng.randrange(0, 30) for _ in range(args.rows)]
        labels = [",".join(rng.sample(mids, rng.randint(1, 4))) for _ in range(args.rows)]
        write_segments(big, ids, starts, labels)

    figures: dict[str, list[tuple[float, float]]] = {
        "dup20k_plan_s": [], "dup20k_baseline_keys_s": [], "dup20k_new_keys_s": [],
        "rows2m_plan_s": [], "rows2m_rerun_s": []}
    from pipeline.plan import unique_keys
    dup_ids = ["-0RWZT-miFs"] * args.duplicates
    dup_starts = [30.0] * args.duplicates
    for _ in range(args.repeats):
        figures["dup20k_plan_s"].append(plan_once(dup, work / "labels.csv", work / "videos",
                                                  work / "out_dup", fresh=True))
        figures["dup20k_new_keys_s"].append(timed(lambda: unique_keys(dup_ids, dup_starts)))
        figures["dup20k_baseline_keys_s"].append(
            timed(lambda: quadratic_unique_keys(dup_ids, dup_starts)))
        figures["rows2m_plan_s"].append(plan_once(big, work / "labels.csv", work / "videos",
                                                  work / "out_big", fresh=True))
        figures["rows2m_rerun_s"].append(plan_once(big, work / "labels.csv", work / "videos",
                                                   work / "out_big", fresh=False))
    assert unique_keys(dup_ids, dup_starts) == quadratic_unique_keys(dup_ids, dup_starts)
    medians = {f"{name} {kind}": round(statistics.median(v[k] for v in values), 3)
               for name, values in figures.items() for k, kind in enumerate(("wall", "cpu"))}
    medians["dup20k_keys_speedup (cpu)"] = round(
        medians["dup20k_baseline_keys_s cpu"] / max(medians["dup20k_new_keys_s cpu"], 1e-9), 1)
    print(json.dumps({"machine": f"{_cpu_model()}, {os.cpu_count()} cores, python "
                                 f"{platform.python_version()}",
                      "load_average": os.getloadavg(), "repeats": args.repeats,
                      "rows": args.rows, "duplicates": args.duplicates, "median": medians,
                      "runs": figures}, indent=1))


if __name__ == "__main__":
    main()
