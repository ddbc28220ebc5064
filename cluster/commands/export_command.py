"""`avsiam export --checkpoint RUN/checkpoints[/step_N] --out model.safetensors`.

Consolidates a DeepSpeed checkpoint (any ZeRO stage, any world size) into fp32 weights of the
AVSiam model, written as safetensors with the model config as metadata:
`AVSiam.load("model.safetensors")` rebuilds the model.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a step_NNNNNNNN folder, or a checkpoint root (its newest complete checkpoint)")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file")


def main(args: argparse.Namespace) -> int:
    from trainer.engine.export import export_weights
    path, step = export_weights(args.checkpoint, args.out)
    print(f"export: step {step} -> {path}")
    return 0
