"""`avsiam finetune --config PRESET_OR_YAML [key=value ...]`: fine-tune for classification.

    avsiam finetune --config as20k init.checkpoint=pretrained.safetensors data.train=AS20K_SHARDS
    torchrun --nproc_per_node 8 -m cluster.cli finetune --config vggsound init.checkpoint=... data.train=...
    avsiam finetune --config tiny_cpu init.checkpoint=runs/demo/pretrain data.train=runs/demo/shards/train

Presets (trainer/configs/finetune_*.yaml): as20k, as2m, vggsound (the official recipes), tiny_cpu
(the demo). The run folder gets metrics.jsonl, TensorBoard logs, DeepSpeed checkpoints (resume with
--resume auto), epochs/epoch_NNN.safetensors and model.safetensors (the average of the last
`average_last` epochs), which `avsiam eval classify --model` reads.
"""
from __future__ import annotations

import argparse

from cluster.commands.command_args import add_run_arguments, load_run_config, print_on_main_rank


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, config_help="YAML file or preset: as20k, as2m, vggsound, tiny_cpu",
                      override_example="optim.lr=5e-5 heads.head_lr_mult=10",
                      init_help="pretrained weights (same as init.checkpoint=...): .safetensors, a "
                                "pretraining run folder, or an official .pth")


def main(args: argparse.Namespace) -> int:
    from trainer.finetune.config import load_finetune_config

    cfg = load_run_config(args, load_finetune_config, "finetune")
    if cfg is None:
        return 0
    if not cfg.init.checkpoint and not cfg.model:
        raise SystemExit("avsiam finetune: no starting weights; set init.checkpoint=FILE_OR_RUN (or "
                         "describe a model to train from scratch with model.size=... etc.)")
    from trainer.finetune.run import finetune
    summary = finetune(cfg)
    print_on_main_rank(f"finetune: {summary.stopped} after step {summary.step} ({summary.epochs_done} "
                       f"epochs); model: {summary.model or 'none yet (resume with --resume auto)'}; "
                       f"metrics: {cfg.out_dir}/metrics.jsonl")
    return 0
