"""`avsiam demo`: the whole system on the built-in synthetic dataset, stage by stage.

Each stage runs the same `avsiam` subcommand a user would type, in a child process, and the demo
prints what it made. Stages whose outputs are already complete are skipped on a re-run (every
subcommand is itself resumable), so an interrupted demo picks up where it stopped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo dataset; small enough for a 2-core machine."""

    out: Path
    clips: int = 400          # enough clips that pairs cannot be memorised
    classes: int = 4
    seconds: float = 1.0
    size: str = "64x64"       # square: the centre crop keeps the object in frame
    seed: int = 0
    workers: int = 2
    frame_size: int = 64
    num_frames: int = 4
    test_fraction: float = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo output folder")
    parser.add_argument("--clips", type=int, default=DemoConfig.clips, help="synthetic clips")
    parser.add_argument("--classes", type=int, default=DemoConfig.classes, help="synthetic classes")
    parser.add_argument("--seconds", type=float, default=DemoConfig.seconds, help="clip length")
    parser.add_argument("--seed", type=int, default=DemoConfig.seed, help="seed of everything")
    parser.add_argument("--workers", type=int, default=DemoConfig.workers, help="processes")


def _run(step: str, argv: list[str]) -> None:
    """Run one `avsiam` subcommand in a child process; stop the demo if it fails."""
    print(f"\n== {step}: avsiam {' '.join(argv)}", flush=True)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *argv])
    if proc.returncode != 0:
        raise SystemExit(f"demo: step '{step}' failed (exit {proc.returncode}); fix the error above and "
                         f"re-run `make demo` (finished steps are skipped)")
    print(f"== {step}: done in {time.time() - started:.1f} s", flush=True)


def synthesise(cfg: DemoConfig) -> Path:
    data = cfg.out / "synth"
    if not (data / "synth.json").exists():
        _run("synthesise", ["synth", "--out", str(data), "--clips", str(cfg.clips),
                            "--classes", str(cfg.classes), "--seed", str(cfg.seed),
                            "--seconds", str(cfg.seconds), "--size", cfg.size,
                            "--test-fraction", str(cfg.test_fraction),
                            "--workers", str(cfg.workers)])
    return data


SPLITS = (("train", "balanced_train_segments.csv"), ("eval", "eval_segments.csv"))


def shard(cfg: DemoConfig, data: Path) -> dict[str, Path]:
    """Shard the train and held-out clips (each split in its own folder), then verify them."""
    out = {}
    for split, manifest in SPLITS:
        folder = cfg.out / "shards" / split
        _run(f"shard {split}", ["shard", "--manifest", str(data / manifest),
                                "--labels", str(data / "class_labels_indices.csv"),
                                "--videos", str(data / "videos"), "--out", str(folder),
                                "--split", split, "--samples-per-shard", "100",
                                "--frame-size", str(cfg.frame_size),
                                "--num-frames", str(cfg.num_frames), "--workers", str(cfg.workers)])
        _run(f"verify {split}", ["verify", "--out", str(folder), "--workers", str(cfg.workers)])
        out[split] = folder
    for split, folder in out.items():
        info = json.loads((folder / "dataset.json").read_text())
        print(f"shards {split}: {folder}  {_counts_line(info)}")
    return out


def _counts_line(info: dict) -> str:
    counts = info.get("counts", {})
    return ", ".join(f"{name} {value}" for name, value in counts.items()
                     if isinstance(value, (int, float)))


def loader_summary(cfg: DemoConfig, shards: dict[str, Path]) -> None:
    """Read one pretraining batch back through the streaming loader and describe it."""
    from shards.loader import make_loader

    loader = make_loader(str(shards["train"]), mode="pretrain", batch_size=8, seed=cfg.seed,
                         num_workers=0, audio_frames=96)
    batch = next(iter(loader))
    print(f"\nloader: {len(loader)} batches/epoch of 8; batch audio {tuple(batch['audio'].shape)} "
          f"mean {batch['audio'].mean():.3f} std {batch['audio'].std():.3f}; "
          f"visual {tuple(batch['visual'].shape)}; keys {batch['keys'][:3]}...")


# The recipe tests/test_demo_quality.py runs (these stages) and asserts: held-out a2v class
# R@1 >= 0.8 and audio-visual mAP >= 0.9. It is AVSiam's objective: multi-ratio masking for the
# contrastive loss (groups unmasked, 20% and 40% masked) plus the masked reconstruction loss, on a
# from-scratch tiny model that 2 cores train in minutes (so: light ratios, reconstruction weight
# 0.25, temperature 0.2).
DEMO_PRETRAIN = ("max_steps=300", "data.batch_size=24", "data.num_workers=0", "model.audio_frames=96",
                 "model.depth=2", "objective.mask_ratios=[0.0,0.2,0.4]",
                 "objective.reconstruction_weight=0.25", "objective.temperature=0.2", "optim.lr=1e-3",
                 "optim.warmup_steps=10", "checkpoint.every_steps=100")


def learn(cfg: DemoConfig, shards: dict[str, Path]) -> dict[str, Path]:
    """Pretrain the tiny model, measure retrieval, fine-tune, classify, embed and plot."""
    run = {name: cfg.out / name for name in ("pretrain", "finetune", "results")}
    _run("pretrain tiny", ["pretrain", "--config", "tiny_cpu", "--resume", "auto",
                           f"data.train={shards['train']}", f"seed={cfg.seed}", *DEMO_PRETRAIN,
                           "--out", str(run["pretrain"])])
    _run("retrieval", ["eval", "retrieval", "--model", str(run["pretrain"]),
                       "--shards", str(shards["eval"]), "--per-class", "5",
                       "--out", str(run["results"] / "retrieval.json")])
    _run("fine-tune tiny", ["finetune", "--config", "tiny_cpu", "--resume", "auto",
                            f"data.train={shards['train']}", f"num_classes={cfg.classes}",
                            "--init", str(run["pretrain"]), "--out", str(run["finetune"])])
    _run("classification", ["eval", "classify", "--model", str(run["finetune"]),
                            "--shards", str(shards["eval"]),
                            "--out", str(run["results"] / "classify.json")])
    _run("embed", ["embed", "--model", str(run["pretrain"]), "--shards", str(shards["eval"]),
                   "--out", str(run["results"] / "embeddings.parquet")])
    _run("t-SNE", ["plot", "tsne", "--embeddings", str(run["results"] / "embeddings.parquet"),
                   "--out", str(cfg.out / "tsne.png")])
    _run("loss curves", ["plot", "losses", str(run["pretrain"]), str(run["finetune"]),
                         "--out", str(cfg.out / "losses.png")])
    return run


def summarise(cfg: DemoConfig, run: dict[str, Path], seconds: float) -> dict:
    """One summary table and runs/demo/summary.json from the evaluation reports."""
    retrieval = json.loads((run["results"] / "retrieval.json").read_text())["summary"]
    classify = json.loads((run["results"] / "classify.json").read_text())["summary"]
    losses = last_losses(run["pretrain"] / "metrics.jsonl")
    # Each retrieval figure names its level: class (a clip of the query's class) or instance (its pair).
    summary = {"retrieval_a2v_class_r1": retrieval.get("retrieval_a2v_class_r1"),
               "retrieval_v2a_class_r1": retrieval.get("retrieval_v2a_class_r1"),
               "retrieval_a2v_instance_r1": retrieval.get("retrieval_a2v_r1"),
               "retrieval_v2a_instance_r1": retrieval.get("retrieval_v2a_r1"),
               "pretrain_loss_contrastive": losses.get("loss/contrastive"),
               "pretrain_loss_reconstruction": losses.get("loss/reconstruction"),
               "av_map": classify.get("av_map"),
               "audio_map": classify.get("audio_map"),
               "visual_map": classify.get("visual_map"),
               "seconds": round(seconds, 1),
               "retrieval_summary": retrieval, "classify_summary": classify}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print("\n" + "\n".join(f"{k:<28} {v}" for k, v in summary.items() if not isinstance(v, dict)))
    print(f"\nsummary: {cfg.out / 'summary.json'}; t-SNE: {cfg.out / 'tsne.png'}; "
          f"loss curves: {cfg.out / 'losses.png'}; TensorBoard: tensorboard --logdir {cfg.out}")
    return summary


def last_losses(metrics: Path) -> dict:
    """The last logged value of each pretraining loss in a metrics.jsonl."""
    from trainer.engine.metrics import read_jsonl

    last: dict = {}
    for record in read_jsonl(metrics) if metrics.is_file() else []:
        last.update({k: v for k, v in record.items() if k.startswith("loss/")})
    return last


def main(args: argparse.Namespace) -> int:
    cfg = DemoConfig(out=args.out, clips=args.clips, classes=args.classes, seconds=args.seconds,
                     seed=args.seed, workers=args.workers)
    started = time.time()
    data = synthesise(cfg)
    info = json.loads((data / "synth.json").read_text())
    print(f"\nsynthetic dataset: {data} ({info.get('clips', cfg.clips)} clips, "
          f"{info.get('classes', cfg.classes)} classes)")
    shards = shard(cfg, data)
    loader_summary(cfg, shards)
    run = learn(cfg, shards)
    summarise(cfg, run, time.time() - started)
    print(f"demo finished in {time.time() - started:.1f} s; outputs under {cfg.out}")
    return 0
