"""`avsiam pretrain --config trainer/configs/NAME.yaml [key=value ...]`: DeepSpeed pretraining.

One process (CPU or one GPU), or every rank under torchrun / SLURM:

    avsiam pretrain --config tiny_cpu data.train=runs/demo/shards
    torchrun --nproc_per_node 8 -m cluster.cli pretrain --config avsiam_base data.train=...
    avsiam pretrain --config avsiam_base --resume auto ...      # newest complete checkpoint

The config (YAML + overrides) is described in trainer/engine/config.py; README "Pretraining".
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="YAML config file, or a preset name: tiny_cpu, avsiam_base, avsiam_large, avsiam_huge")
    parser.add_argument("--resume", default=None,
                        help="auto (newest complete checkpoint, if any), none, or a checkpoint folder; "
                             "same as checkpoint.resume=...")
    parser.add_argument("--out", default=None, help="run folder (logs, metrics, checkpoints); same as out_dir=...")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides with dotted keys, e.g. optim.lr=3e-4 deepspeed.zero_stage=3")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    import json

    from trainer.engine.config import load_config

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out_dir={args.out}")
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    if not cfg.data.train:
        raise SystemExit("avsiam pretrain: no training shards; set data.train=DIR_OR_URLS "
                         "(e.g. the --out folder of `avsiam shard`)")
    from trainer.engine.trainer import train
    summary = train(cfg)
    import os
    if os.environ.get("RANK", "0") == "0":
        print(f"pretrain: {summary.stopped} after step {summary.step}; metrics: {cfg.out_dir}/metrics.jsonl; "
              f"TensorBoard: tensorboard --logdir {cfg.out_dir}/tensorboard; "
              f"checkpoint: {summary.checkpoint or 'none'}", flush=True)
    return 0
