"""`avsiam pretrain --config trainer/configs/NAME.yaml [key=value ...]`: DeepSpeed pretraining.

One process (CPU or one GPU), or every rank under torchrun / SLURM:

    avsiam pretrain --config tiny_cpu data.train=runs/demo/shards
    torchrun --nproc_per_node 8 -m cluster.cli pretrain --config avsiam_base data.train=...
    avsiam pretrain --config avsiam_base --resume auto ...      # newest complete checkpoint

The config (YAML + overrides) is described in trainer/engine/config.py; README "Pretraining".
"""
from __future__ import annotations

import argparse

from cluster.commands.command_args import add_run_arguments, load_run_config, print_on_main_rank


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, override_example="optim.lr=3e-4 deepspeed.zero_stage=3",
                      config_help="YAML config file, or a preset name: tiny_cpu, avsiam_base, "
                                  "avsiam_large, avsiam_huge")


def main(args: argparse.Namespace) -> int:
    from trainer.engine.config import load_config

    cfg = load_run_config(args, load_config, "pretrain")
    if cfg is not None:                     # None: --print-config
        from trainer.engine.trainer import train
        summary = train(cfg)
        print_on_main_rank(f"pretrain: {summary.stopped} after step {summary.step}; metrics: "
                           f"{cfg.out_dir}/metrics.jsonl; TensorBoard: tensorboard --logdir "
                           f"{cfg.out_dir}/tensorboard; checkpoint: {summary.checkpoint or 'none'}")
    return 0
