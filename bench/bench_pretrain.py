"""Pretraining step throughput, MFU and peak memory, on CPU (tiny) or CUDA (base, large).

Each configuration runs in its own process (a clean peak-memory reading): the real DeepSpeed engine
(ZeRO-2, one rank) on a fixed random batch, `--warmup` steps, then `--repeats` timed windows of
`--steps` steps; samples/s is the median window. Every table has its baseline measured in the same
run. Studies:
  sizes    per size: samples/s, MFU and peak memory at the largest micro-batch that fits (CUDA:
           doubling search from --batch until out of memory; CPU: --batch)
  backbone shared vs separate backbones (share_backbone=False), baseline shared
  packing  multi-ratio groups as sub-batches vs packed into one pass, baseline sub-batches
  schedule objective.schedule: sum (one step, baseline) vs official (two steps, two Adam states)
           vs alternate (two steps, one Adam state)
  memory   peak memory vs contrastive batch at a fixed gradient-caching chunk, against no chunking

    python bench/bench_pretrain.py                          # CPU: tiny, all studies
    python bench/bench_pretrain.py --device cuda --sizes base,large --memory-batches 1024,...,65536
Peak memory: CUDA max allocated; CPU peak RSS of the process, and the part above the RSS after the
engine was built ("step" column: activations, gradients, optimizer state). MFU needs the device's peak
(known GPUs, or --peak-tflops).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Geometry per size for the benchmark (tiny: the demo preset's; others: the paper's).
SIZE_OVERRIDES = {
    "tiny": ["model.size=tiny", "model.audio_frames=128", "model.image_size=64", "model.depth=4",
             "model.decoder_depth=1"],
    "base": ["model.size=base"],
    "large": ["model.size=large"],
    "huge": ["model.size=huge"],
}


# ------------------------------------------------------------------------------------ worker
def worker(spec: dict) -> dict:
    """Run one configuration in this process and return its measurements."""
    from trainer.engine.distributed import init_distributed
    ctx = init_distributed(spec["device"])
    import torch

    from trainer.engine.config import load_config
    from trainer.engine.deepspeed_config import create_engine
    from trainer.engine.flops import mfu, peak_flops, train_flops_per_sample
    from trainer.engine.module import build_pretrain_module
    from trainer.engine.step import MaskPlan, PretrainStep
    from trainer.masking import MultiRatioMasker

    cfg = load_config(None, spec["overrides"] + [f"data.batch_size={spec['batch']}", f"device={ctx.device_type}"])
    torch.manual_seed(0)
    module = build_pretrain_module(cfg)
    engine, _ = create_engine(module, cfg, 1, ctx.device_type)
    model = module.model
    stepper = PretrainStep(engine, cfg.objective)
    plan = MaskPlan(MultiRatioMasker(ratios=cfg.objective.mask_ratios, audio_grid=model.audio_grid,
                                     visual_grid=model.visual_grid), cfg.objective.reconstruction_ratio,
                    model.audio_grid[0] * model.audio_grid[1], model.visual_grid[0] * model.visual_grid[1],
                    seed=0, rank=0, group=cfg.objective.contrastive_chunk)
    batch = _random_batch(cfg, spec["batch"], ctx.device_type, stepper.dtype)
    inputs = [stepper.to_inputs(batch, plan.draw(spec["batch"], 0, 0, engine.device))]
    base_mem = _current_memory_gib(ctx.device_type)
    if ctx.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(spec["warmup"]):
        stepper.run(inputs, cfg.optim.lr)
    windows = []
    for _ in range(spec["repeats"]):
        _sync(ctx.device_type)
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            stepper.run(inputs, cfg.optim.lr)
        _sync(ctx.device_type)
        windows.append(spec["batch"] * spec["steps"] / (time.perf_counter() - start))
    sps = statistics.median(windows)
    flops = train_flops_per_sample(cfg.model, cfg.objective.mask_ratios, cfg.objective.reconstruction_ratio)
    peak = spec.get("peak_tflops") and spec["peak_tflops"] * 1e12
    if not peak and ctx.device_type == "cuda":
        peak = peak_flops(torch.cuda.get_device_name(), cfg.deepspeed.precision)
    peak_mem = _peak_memory_gib(ctx.device_type)
    return {"samples_per_s": sps, "windows": windows, "mfu": mfu(flops, sps, peak), "peak_gib": peak_mem,
            "step_gib": peak_mem - base_mem, "gflops_per_sample": flops / 1e9}


def _random_batch(cfg, batch: int, device_type: str, dtype) -> dict:
    """Random inputs; with gradient caching they stay in (pinned) host memory, as in training."""
    import torch
    on_host = bool(cfg.objective.contrastive_chunk) or device_type == "cpu"
    kw = dict(dtype=dtype if device_type == "cuda" else torch.float32,
              device="cpu" if on_host else "cuda", pin_memory=on_host and device_type == "cuda")
    audio = torch.empty(batch, cfg.model.audio_frames, 128, **kw).normal_()
    visual = torch.empty(batch, 3, cfg.model.image_size, cfg.model.image_size, **kw).normal_()
    return {"audio": audio, "visual": visual}


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch
        torch.cuda.synchronize()


def _current_memory_gib(device_type: str) -> float:
    if device_type == "cuda":
        import torch
        return torch.cuda.memory_allocated() / 2 ** 30
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def _peak_memory_gib(device_type: str) -> float:
    if device_type == "cuda":
        import torch
        return torch.cuda.max_memory_allocated() / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# ------------------------------------------------------------------------------------ parent
def measure(spec: dict, timeout: float) -> dict | None:
    """One configuration in a fresh process; None when it ran out of memory."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len("RESULT "):])
    if "out of memory" in (proc.stderr + proc.stdout).lower():
        return None
    raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}) for {spec}:\n{proc.stderr[-3000:]}")


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _row(label: str, result: dict, baseline: dict | None, batch: int) -> str:
    ratio = result["samples_per_s"] / baseline["samples_per_s"] if baseline else 1.0
    return (f"| {label} | {batch} | {result['samples_per_s']:.1f} | {ratio:.2f}x | {_fmt(result['mfu'], '{:.1%}')} | "
            f"{result['peak_gib']:.2f} | {result['step_gib']:.2f} |")


HEADER = ("| configuration | micro-batch | samples/s (median) | vs baseline | MFU | peak GiB | step GiB |\n"
          "|---|---|---|---|---|---|---|")


def largest_batch(spec: dict, start: int, limit: int, timeout: float) -> tuple[int, dict]:
    """Double the micro-batch until it no longer fits (CUDA); the last that fitted and its result."""
    best, result, batch = None, None, start
    while batch <= limit:
        found = measure({**spec, "batch": batch}, timeout)
        if found is None:
            break
        best, result, batch = batch, found, batch * 2
    if best is None:
        raise RuntimeError(f"not even a micro-batch of {start} fits: {spec['overrides']}")
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sizes", default="tiny")
    parser.add_argument("--batch", type=int, default=32, help="micro-batch (CUDA: start of the search)")
    parser.add_argument("--max-batch", type=int, default=4096, help="CUDA search limit")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--studies", default="sizes,backbone,packing,schedule,memory")
    parser.add_argument("--memory-batches", default="32,64,128,256")
    parser.add_argument("--chunk", type=int, default=32, help="gradient-caching chunk of the memory study")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of each measurement (default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    precision = "bf16" if args.device == "cuda" else "fp32"
    common = [f"deepspeed.precision={precision}", "deepspeed.zero_stage=2"]
    base_spec = {"device": args.device, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                 "peak_tflops": args.peak_tflops, "threads": args.threads}
    studies, results = args.studies.split(","), {}
    sizes = args.sizes.split(",")
    print(f"# bench_pretrain: {' '.join(sys.argv[1:]) or '(defaults)'}; device {args.device}, {precision}, "
          f"{args.repeats} windows of {args.steps} steps after {args.warmup} warm-up, "
          f"threads {args.threads or 'default'}\n")

    def spec(size: str, *extra: str, batch: int) -> dict:
        return {**base_spec, "overrides": SIZE_OVERRIDES[size] + common + list(extra), "batch": batch}

    batch_of = {}
    if "sizes" in studies:
        print("## Per size (shared backbone, sub-batch groups)\n\n" + HEADER)
        for size in sizes:
            if args.device == "cuda":
                batch, result = largest_batch(spec(size, batch=args.batch), args.batch, args.max_batch, args.timeout)
            else:
                batch, result = args.batch, measure(spec(size, batch=args.batch), args.timeout)
            batch_of[size] = batch
            results[f"size/{size}"] = {"batch": batch, **result}
            print(_row(size, result, None, batch), flush=True)
    for study, variants in (("backbone", [("shared", []), ("separate", ["model.share_backbone=false"])]),
                            ("packing", [("sub-batches", []), ("packed", ["objective.packed=true"])]),
                            ("schedule", [("sum", []), ("official", ["objective.schedule=official"]),
                                          ("alternate", ["objective.schedule=alternate"])])):
        if study not in studies:
            continue
        print(f"\n## {study}: baseline {variants[0][0]}\n\n" + HEADER)
        for size in sizes:
            batch = batch_of.get(size, args.batch)
            if study == "backbone" and args.device == "cuda":
                batch = max(args.batch, batch // 2)     # separate weights leave less room
            base = None
            for label, extra in variants:
                result = measure(spec(size, *extra, batch=batch), args.timeout)
                results[f"{study}/{size}/{label}"] = {"batch": batch, **result} if result else None
                if result is None:
                    print(f"| {size} {label} | {batch} | out of memory | | | | |")
                    continue
                base = base or result
                print(_row(f"{size} {label}", result, base, batch), flush=True)
    if "memory" in studies:
        size = sizes[0]
        print(f"\n## Peak memory vs contrastive batch ({size}; gradient caching chunk {args.chunk} "
              f"vs none), baseline: the smallest batch\n\n" + HEADER)
        for label, extra in (("no chunking", []), (f"chunk {args.chunk}", [f"objective.contrastive_chunk={args.chunk}"])):
            base = None
            for batch in (int(b) for b in args.memory_batches.split(",")):
                result = measure({**spec(size, *extra, batch=batch), "repeats": 1, "steps": 1, "warmup": 1},
                                 args.timeout)
                results[f"memory/{label}/{batch}"] = result
                if result is None:
                    print(f"| {label} | {batch} | out of memory | | | | |", flush=True)
                    continue
                base = base or result
                print(_row(label, result, base, batch), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
