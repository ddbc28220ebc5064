"""Model-level training throughput: multi-ratio groups as sub-batches vs one packed pass, and the
shared backbone vs separate encoders.

One measured step = forward + backward of the contrastive branch (multi-ratio masks, symmetric
InfoNCE), or with `--workload step` the contrastive plus the reconstruction branch (75% masks).
Variants run interleaved, round by round, on the same inputs and masks; the figure per variant is the
median samples/s over the rounds, with its ratio to the baseline (shared backbone, sub-batches: what
the official code does) measured in the same run. On CUDA, peak memory per variant is reported too.
Samples per CPU-second (time.process_time) are reported beside wall-clock samples/s: with --threads 1
on a shared CPU they count only the time this process computed.

    .venv/bin/python bench/bench_model.py --size tiny --batch 20
    .venv/bin/python bench/bench_model.py --size base --batch 5 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.losses import ContrastiveLoss  # noqa: E402
from trainer.masking import MultiRatioMasker, random_masks  # noqa: E402
from trainer.model import AVSiam  # noqa: E402

VARIANTS = {  # name -> (share_backbone, packed)
    "shared/sub-batch": (True, False),
    "shared/packed": (True, True),
    "separate/sub-batch": (False, False),
    "separate/packed": (False, True),
}
BASELINE = "shared/sub-batch"


@dataclass(kw_only=True)
class BenchConfig:
    size: str = "tiny"
    batch: int = 20
    repeats: int = 5
    warmup: int = 1
    workload: str = "contrastive"     # contrastive | step
    device: str = "auto"
    audio_frames: int = 1024
    image_size: int = 224
    depth: int | None = None
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.workload not in ("contrastive", "step"):
            raise ValueError(f"workload must be contrastive or step, got {self.workload!r}")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"


def _step(model: AVSiam, loss_fn: ContrastiveLoss, inputs: dict, packed: bool, workload: str, device) -> None:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with autocast:
        a, v = model.contrastive_embeddings(inputs["fbank"], inputs["frames"], inputs["masks"], packed=packed)
        loss, _ = loss_fn(a, v)
        if workload == "step":
            loss = loss + model.reconstruction_loss(inputs["fbank"], inputs["frames"], inputs["rec_masks"])["loss"]
    loss.backward()
    model.zero_grad(set_to_none=True)


def _timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(cfg: BenchConfig) -> dict:
    device = torch.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    geometry = dict(audio_frames=cfg.audio_frames, image_size=cfg.image_size, depth=cfg.depth)
    models = {}
    for share in (True, False):
        torch.manual_seed(cfg.seed)
        models[share] = AVSiam(size=cfg.size, num_classes=10, share_backbone=share, **geometry).to(device).train()
    ref = models[True]
    masker = MultiRatioMasker(audio_grid=ref.audio_grid, visual_grid=ref.visual_grid)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    inputs = {
        "fbank": torch.randn(cfg.batch, cfg.audio_frames, 128, device=device, generator=g),
        "frames": torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size, device=device, generator=g),
        "masks": masker(cfg.batch, generator=g, device=device),
        "rec_masks": random_masks(cfg.batch, 0.75, ref.embed_a.num_tokens, ref.embed_v.num_tokens, generator=g, device=device),
    }
    loss_fn = ContrastiveLoss().to(device)
    times = {name: [] for name in VARIANTS}
    cpu_times = {name: [] for name in VARIANTS}
    peak = {}
    for round_index in range(cfg.warmup + cfg.repeats):
        for name, (share, packed) in VARIANTS.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, cpu_seconds = _timed(lambda: _step(models[share], loss_fn, inputs, packed, cfg.workload, device), device)
            if device.type == "cuda":
                peak[name] = torch.cuda.max_memory_allocated(device) / 2**30
            if round_index >= cfg.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
            print(f"round {round_index} {name:<20} {cfg.batch / seconds:8.2f} samples/s", file=sys.stderr)
    base = statistics.median(times[BASELINE])
    base_cpu = statistics.median(cpu_times[BASELINE])
    results = {}
    for name, values in times.items():
        median, median_cpu = statistics.median(values), statistics.median(cpu_times[name])
        results[name] = {"samples_per_s": cfg.batch / median, "median_s": median, "runs_s": values,
                         "speed_vs_baseline": base / median,
                         # CPU time of this process: on a shared CPU it ignores time spent waiting
                         "samples_per_cpu_s": cfg.batch / median_cpu, "cpu_runs_s": cpu_times[name],
                         "cpu_speed_vs_baseline": base_cpu / median_cpu,
                         **({"peak_gib": peak[name]} if name in peak else {})}
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return {"config": asdict(cfg), "machine": machine, "torch": torch.__version__, "baseline": BASELINE,
            "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig(device="cpu")
    for field, value in asdict(defaults).items():
        kind = int if field in ("depth", "threads") else type(value)
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind,
                            default="auto" if field == "device" else value)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    report = run(BenchConfig(**args))
    print(f"{report['machine']}; size {report['config']['size']}, batch {report['config']['batch']}, "
          f"workload {report['config']['workload']}, median of {report['config']['repeats']} rounds")
    print(f"{'variant':<20}{'samples/s':>12}{'vs baseline':>13}{'samples/CPU-s':>15}{'vs baseline':>13}{'peak GiB':>10}")
    for name, r in report["results"].items():
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        print(f"{name:<20}{r['samples_per_s']:>12.2f}{r['speed_vs_baseline']:>12.2f}x"
              f"{r['samples_per_cpu_s']:>15.2f}{r['cpu_speed_vs_baseline']:>12.2f}x{peak:>10}")
    if out:
        out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
