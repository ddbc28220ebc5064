"""`avsiam eval classify|retrieval`: the paper's evaluation protocols, as JSON plus a table.

    avsiam eval classify  --model RUN/model.safetensors --shards SHARDS --out results/cls.json
    avsiam eval retrieval --model pretrained.safetensors --shards SHARDS --per-class 5 --out results/ret.json
    avsiam eval retrieval --embeddings emb.parquet --out results/ret.json   (from `avsiam embed`)

Each writes OUT (JSON, with a flat "summary") and OUT with suffix .txt (the table it prints).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _add_inputs(parser: argparse.ArgumentParser, model_required: bool) -> None:
    parser.add_argument("--model", required=model_required,
                        help="a .safetensors model (avsiam export/convert/finetune), a run folder, or "
                             "an official AVSiam .pth")
    parser.add_argument("--shards", required=model_required,
                        help="eval shards: a folder written by `avsiam shard` or a brace pattern")
    parser.add_argument("--official-size", default=None, choices=("base", "large", "huge"),
                        help="size of an official checkpoint given as --model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    add_norm_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="result JSON (table: same name .txt)")


def add_norm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fbank-mean", type=float, default=None,
                        help="fbank normalisation mean (default: the one the model was trained with, "
                             "from its file; else the shards' dataset.json, else CAV-MAE's)")
    parser.add_argument("--fbank-std", type=float, default=None, help="fbank normalisation std")


def loader_options(args: argparse.Namespace) -> dict:
    return {k: v for k, v in (("fbank_mean", args.fbank_mean), ("fbank_std", args.fbank_std))
            if v is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="protocol", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    cls = sub.add_parser("classify", formatter_class=fmt,
                         help="mAP, mAUC, d', top-1 for audio, visual and audio-visual inputs")
    _add_inputs(cls, model_required=True)
    cls.add_argument("--modes", default="audio,visual,audio_visual",
                     help="comma-separated inputs: audio, visual, audio_visual")
    cls.add_argument("--frames", default="all", choices=("all", "middle"),
                     help="all: middle-frame AND all-frame averaged predictions; middle: only the first")
    cls.add_argument("--activation", default="sigmoid", choices=("sigmoid", "softmax"),
                     help="sigmoid for multi-label AudioSet, softmax for single-label VGGSound")

    ret = sub.add_parser("retrieval", formatter_class=fmt,
                         help="audio->visual and visual->audio R@1/5/10 and median rank")
    _add_inputs(ret, model_required=False)
    ret.add_argument("--embeddings", type=Path, default=None,
                     help="use this `avsiam embed` Parquet file instead of --model/--shards")
    ret.add_argument("--per-class", type=int, default=5,
                     help="clips per class in the retrieval set (deterministic choice); 0 = all")
    ret.add_argument("--seed", type=int, default=0, help="seed of the clip choice")


def _inputs(args: argparse.Namespace):
    from trainer.evaluation.inputs import EvalInputs

    return EvalInputs(model=args.model, shards=args.shards, batch_size=args.batch_size,
                      num_workers=args.workers, device=args.device,
                      official_size=args.official_size, loader_options=loader_options(args))


def _run(args: argparse.Namespace) -> int:
    from trainer.evaluation import protocols
    from trainer.evaluation.report import write_report

    if args.protocol == "classify":
        config = protocols.ClassifyConfig(modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                                          frames=args.frames, activation=args.activation)
        payload, tables = protocols.run_classification(_inputs(args), config)
    else:
        if args.embeddings is not None:
            from trainer.evaluation.embeddings import read_embeddings
            table = read_embeddings(args.embeddings)
            source = {"embeddings": str(args.embeddings)}
        elif args.model and args.shards:
            emb = protocols.compute_embeddings(_inputs(args))
            table = protocols.to_table(emb, {"model": str(args.model), "frame": "middle"})
            source = {"model": str(args.model), "shards": str(args.shards)}
        else:
            raise SystemExit("avsiam eval retrieval: give --embeddings FILE, or --model and --shards")
        payload, tables = protocols.retrieval_payload(table, args.per_class, args.seed)
        payload = {**source, **payload, "seed": args.seed}
    json_path, text_path = write_report(args.out, payload, tables)
    print("\n\n".join(t.render() for t in tables))
    print(f"\nresults: {json_path} (table: {text_path})")
    return 0


def main(args: argparse.Namespace) -> int:
    import torch

    with torch.no_grad():  # scoped: a global switch would leak into an in-process caller
        return _run(args)
