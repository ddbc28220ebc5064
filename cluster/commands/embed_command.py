"""`avsiam embed`: audio and visual embeddings of every clip of some shards, into one Parquet file.

    avsiam embed --model pretrained.safetensors --shards SHARDS --out emb.parquet
    avsiam plot tsne --embeddings emb.parquet --out tsne.png
    avsiam eval retrieval --embeddings emb.parquet --out retrieval.json

Columns: key, labels (class indices), audio, visual (model-width float32 vectors: the mean of the
final-normed tokens, not L2-normalised; visual from the middle frame unless --frame says otherwise).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a .safetensors model, a run folder, or an official AVSiam .pth")
    parser.add_argument("--shards", required=True, help="shard folder or brace pattern")
    parser.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    parser.add_argument("--frame", default="middle",
                        help="which stored frame gives the visual vector: middle or an index")
    parser.add_argument("--official-size", default=None, choices=("base", "large", "huge"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    from cluster.commands.eval_command import add_norm_arguments
    add_norm_arguments(parser)


def _run(args: argparse.Namespace) -> int:
    from cluster.commands.eval_command import loader_options
    from trainer.evaluation.embeddings import write_embeddings
    from trainer.evaluation.inputs import EvalInputs
    from trainer.evaluation.protocols import compute_embeddings, to_table

    frame = int(args.frame) if str(args.frame).isdigit() else args.frame
    if frame != "middle" and not isinstance(frame, int):
        raise SystemExit(f"avsiam embed: --frame must be middle or a frame index, got {args.frame!r}")
    inputs = EvalInputs(model=args.model, shards=args.shards, batch_size=args.batch_size,
                        num_workers=args.workers, device=args.device,
                        official_size=args.official_size, loader_options=loader_options(args))
    emb = compute_embeddings(inputs, frame)
    metadata = {"model": str(args.model), "shards": str(args.shards), "frame": frame,
                "pooling": "mean of final-normed tokens", "normalised": False}
    table = to_table(emb, metadata)
    out = write_embeddings(args.out, table)
    print(f"embed: {len(table)} clips, audio {emb.audio.shape[1]}-d and visual "
          f"{emb.visual.shape[1]}-d vectors -> {out}")
    return 0


def main(args: argparse.Namespace) -> int:
    import torch

    with torch.no_grad():  # scoped: a global switch would leak into an in-process caller
        return _run(args)
