"""Speed of the streaming loader (pretrain mode) against an AVSiam-style per-sample media loader,
and the label distribution of streaming balanced sampling against the exact weighted sampler.

Speed: both loaders run in ONE DataLoader worker process (torch threads 1) on the same clips in the
same run: ours reads the shards `avsiam shard` wrote from them (resampled, so the epoch can be longer
than the clip set; OS cache warm), the baseline (bench/loader_baseline.py) runs ffmpeg and the Kaldi
fbank on each mp4 per sample. Reported per repeat: samples/s of wall time from the first batch to the
last (worker start-up excluded); samples per CPU-second of the worker process and everything it
started (ffmpeg included) over the whole run (start-up and our shuffle-buffer fill included) =
samples/s per core of a worker; the same counting the main process too; ours with
output_dtype="bfloat16" (half the bytes handed over); ours as a GPU trainer takes it (bfloat16
audio, raw_frames=True: uint8 frames, normalised on the device); and ours in the main process (num_workers=0,
nothing handed over: the decoding cost alone). Median of --repeats.

Balance: AudioSet-like Zipf label counts over --classes labels; the streaming repeat rule of
shards.balance.BalanceRepeat over a pass of the data vs torch's WeightedRandomSampler drawing as many
samples with the CAV-MAE weights; total-variation distance between their label distributions.

    .venv/bin/python bench/bench_loader.py --clips 48 --samples 6000 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loader_baseline import AVSiamStyleClips  # noqa: E402
from shards.balance import BalanceRepeat, label_weights, mean_sample_weight, sample_weights  # noqa: E402
from shards.loader import make_loader  # noqa: E402


def cpu_seconds() -> tuple[float, float]:
    """(CPU of this process, CPU of all finished children: DataLoader workers and their ffmpeg)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def worker_init(_):
    torch.set_num_threads(1)


def timed(batches) -> dict:
    """Samples, wall seconds after the first batch, and CPU seconds of the whole run: the worker
    process (and what it started) and the main process, for all samples."""
    main0, workers0 = cpu_seconds()
    it = iter(batches)
    total = len(next(it)["audio"])
    start, count = time.perf_counter(), 0
    for batch in it:
        count += len(batch["audio"])
    wall = time.perf_counter() - start
    del it, batch
    main1, workers1 = cpu_seconds()
    return {"samples": count, "wall_s": wall, "all_samples": total + count,
            "worker_cpu_s": workers1 - workers0, "main_cpu_s": main1 - main0}


def prepare(work: Path, clips: int) -> tuple[Path, list[str]]:
    """Synthetic 10 s clips (320x240 H.264/AAC) and their shards (10 frames of 224, CAV-MAE fbank)."""
    from cluster.cli import main as avsiam
    from pipeline.synth import SynthConfig, write_dataset

    synth = write_dataset(SynthConfig(out=work / "synth", clips=clips, classes=8, seed=0,
                                      test_fraction=0.0))
    shards = work / "shards"
    if not (shards / "dataset.json").exists():
        code = avsiam(["shard", "--manifest", synth["balanced_train_csv"], "--labels",
                       synth["labels_csv"], "--videos", synth["videos_dir"], "--out", str(shards),
                       "--samples-per-shard", "16", "--no-progress"])
        if code:
            raise SystemExit(f"avsiam shard failed with {code}")
    return shards, sorted(str(p) for p in (work / "synth" / "videos").glob("*.mp4"))


def run_ours(shards: Path, samples: int, batch: int, seed: int, **options) -> dict:
    loader = make_loader(str(shards), mode="pretrain", batch_size=batch, num_workers=1, seed=seed,
                         resampled=True, samples_per_epoch=samples, **options)
    return timed(loader)


def in_process_rate(shards: Path, samples: int, batch: int, seed: int) -> float:
    """Samples per CPU-second of our loader with num_workers=0 (no hand-over to another process)."""
    loader = make_loader(str(shards), mode="pretrain", batch_size=batch, num_workers=0, seed=seed,
                         resampled=True, samples_per_epoch=samples)
    start = time.process_time()
    count = sum(len(b["audio"]) for b in loader)
    return count / (time.process_time() - start)


def run_baseline(videos: list[str], batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    data = AVSiamStyleClips(videos)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=1,
                                         worker_init_fn=worker_init, persistent_workers=False)
    return timed(loader)


def speed(args) -> dict:
    shards, videos = prepare(Path(args.work), args.clips)
    rows = []
    for r in range(args.repeats):
        ours = run_ours(shards, args.samples, args.batch, seed=r)
        ours_bf16 = run_ours(shards, args.samples, args.batch, seed=r, output_dtype="bfloat16")
        ours_raw = run_ours(shards, args.samples, args.batch, seed=r, output_dtype="bfloat16",
                            raw_frames=True)
        base = run_baseline(videos, args.baseline_batch, seed=r)
        row = {}
        for name, run in (("ours", ours), ("ours_bf16", ours_bf16), ("ours_raw", ours_raw),
                          ("base", base)):
            row[f"{name}_per_s"] = run["samples"] / run["wall_s"]
            row[f"{name}_per_worker_cpu_s"] = run["all_samples"] / run["worker_cpu_s"]
            row[f"{name}_per_cpu_s"] = run["all_samples"] / (run["worker_cpu_s"] + run["main_cpu_s"])
        for key in ("per_s", "per_worker_cpu_s", "per_cpu_s"):
            row[f"ratio_{key}"] = row[f"ours_{key}"] / row[f"base_{key}"]
            row[f"ratio_raw_{key}"] = row[f"ours_raw_{key}"] / row[f"base_{key}"]
        row["ours_in_process_per_cpu_s"] = in_process_rate(shards, args.samples, args.batch, r)
        rows.append(row)
        print(json.dumps({"repeat": r, **{k: round(v, 2) for k, v in row.items()}}), flush=True)
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def balance(args) -> dict:
    """Streaming repeat rule vs WeightedRandomSampler on Zipf-distributed labels."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, args.classes + 1) ** 1.1
    popularity /= popularity.sum()
    labels = []
    for _ in range(args.label_samples):
        k = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        labels.append(sorted(set(rng.choice(args.classes, size=k, p=popularity).tolist())))
    counts = np.zeros(args.classes)
    for ls in labels:
        counts[ls] += 1
    weights = label_weights(counts)
    raw = [{"json": json.dumps({"label_indices": ls}).encode(), "i": i} for i, ls in enumerate(labels)]
    natural = np.zeros(args.classes)
    for ls in labels:
        natural[ls] += 1

    def dist(indices) -> np.ndarray:
        out = np.zeros(args.classes)
        for i in indices:
            out[labels[i]] += 1
        return out / out.sum()

    passes = args.label_passes
    stage = BalanceRepeat(weights, mean_sample_weight(counts, len(labels)), np.random.default_rng(1))
    streamed = dist(s["i"] for _ in range(passes) for s in stage(raw))
    drawn = torch.utils.data.WeightedRandomSampler(
        torch.tensor(sample_weights(labels, weights)), num_samples=passes * len(labels),
        replacement=True, generator=torch.Generator().manual_seed(2))
    exact = dist(drawn)
    again = dist(torch.utils.data.WeightedRandomSampler(
        torch.tensor(sample_weights(labels, weights)), num_samples=passes * len(labels),
        replacement=True, generator=torch.Generator().manual_seed(3)))
    natural = natural / natural.sum()
    rare = counts <= np.quantile(counts, 0.1)
    return {"classes": args.classes, "samples": len(labels), "passes": passes,
            "tv_stream_vs_exact": 0.5 * float(np.abs(streamed - exact).sum()),
            "tv_exact_vs_exact_reseeded": 0.5 * float(np.abs(again - exact).sum()),
            "tv_natural_vs_exact": 0.5 * float(np.abs(natural - exact).sum()),
            "rare_share_natural": float(natural[rare].sum()), "rare_share_exact": float(exact[rare].sum()),
            "rare_share_stream": float(streamed[rare].sum())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench_loader", help="clips and shards (reused)")
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--samples", type=int, default=6000, help="samples our loader streams")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--baseline-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--label-samples", type=int, default=20000)
    parser.add_argument("--label-passes", type=int, default=5)
    parser.add_argument("--part", choices=("all", "speed", "balance"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {}
    if args.part in ("all", "speed"):
        result["speed_median"] = speed(args)
    if args.part in ("all", "balance"):
        result["balance"] = balance(args)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
