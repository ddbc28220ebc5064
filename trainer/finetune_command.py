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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="YAML file or preset: as20k, as2m, vggsound, tiny_cpu")
    parser.add_argument("--init", default=None,
                        help="pretrained weights (same as init.checkpoint=...): .safetensors, a "
                             "pretraining run folder, or an official .pth")
    parser.add_argument("--resume", default=None,
                        help="auto, none, or a checkpoint folder; same as checkpoint.resume=...")
    parser.add_argument("--out", default=None, help="run folder; same as out_dir=...")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides with dotted keys, e.g. optim.lr=5e-5 heads.head_lr_mult=10")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    import json
    import os

    from trainer.finetune.config import load_finetune_config

    overrides = list(args.overrides)
    for flag, key in ((args.init, "init.checkpoint"), (args.out, "out_dir"),
                      (args.resume, "checkpoint.resume")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_finetune_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    if not cfg.data.train:
        raise SystemExit("avsiam finetune: no training shards; set data.train=DIR_OR_URLS")
    if not cfg.init.checkpoint and not cfg.model:
        raise SystemExit("avsiam finetune: no starting weights; set init.checkpoint=FILE_OR_RUN (or "
                         "describe a model to train from scratch with model.size=... etc.)")
    from trainer.finetune.run import finetune
    summary = finetune(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"finetune: {summary.stopped} after step {summary.step} ({summary.epochs_done} epochs); "
              f"model: {summary.model or 'none yet (resume with --resume auto)'}; "
              f"metrics: {cfg.out_dir}/metrics.jsonl", flush=True)
    return 0
