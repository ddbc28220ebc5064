"""`avsiam model-info`: parameters by part and forward GFLOPs per sample of every pass, per size."""
from __future__ import annotations

import argparse
import json

PASSES = ("audio_only", "visual_only", "audio_visual", "contrastive", "reconstruction")
PARTS = ("shared", "audio", "visual", "fusion", "decoder", "heads", "total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="all", choices=("all", "tiny", "base", "large", "huge"),
                        help="model size, or all of them")
    parser.add_argument("--separate", action="store_true",
                        help="the separate-encoder variant (share_backbone=False) instead of the shared ViT")
    parser.add_argument("--num-classes", type=int, default=527)
    parser.add_argument("--ratios", default="0,0.2,0.4,0.6,0.8",
                        help="masking ratios of the contrastive groups (comma-separated)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per size instead of tables")


def main(args: argparse.Namespace) -> int:
    from trainer.model.config import SIZES
    from trainer.model.info import forward_gflops, meta_model, parameter_groups

    ratios = tuple(float(r) for r in args.ratios.split(","))
    sizes = list(SIZES) if args.size == "all" else [args.size]
    rows = []
    for size in sizes:
        model = meta_model(size, num_classes=args.num_classes, share_backbone=not args.separate)
        rows.append((size, parameter_groups(model), forward_gflops(model, ratios)))
    if args.json:
        for size, params, flops in rows:
            print(json.dumps({"size": size, "share_backbone": not args.separate, "parameters": params,
                              "gflops_per_sample": {k: round(v, 3) for k, v in flops.items()}}))
        return 0
    backbone = "separate encoders" if args.separate else "shared backbone"
    print(f"Parameters (millions), {backbone}; heads for {args.num_classes} classes")
    print(f"{'size':<7}" + "".join(f"{p:>10}" for p in PARTS))
    for size, params, _ in rows:
        print(f"{size:<7}" + "".join(f"{params[p] / 1e6:>10.2f}" for p in PARTS))
    print(f"\nForward GFLOPs per sample (1 multiply-add = 2 FLOPs); contrastive = multi-ratio "
          f"{ratios} sub-batches averaged, reconstruction = 75% masking + fusion + decoder")
    print(f"{'size':<7}" + "".join(f"{p:>15}" for p in PASSES))
    for size, _, flops in rows:
        print(f"{size:<7}" + "".join(f"{flops[p]:>15.2f}" for p in PASSES))
    return 0
