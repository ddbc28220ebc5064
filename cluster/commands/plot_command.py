"""`avsiam plot tsne|losses`: the t-SNE picture of an embedding file, or loss curves of runs."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", required=True)
    tsne = sub.add_parser("tsne", help="audio and visual embeddings in one t-SNE picture (PNG)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tsne.add_argument("--embeddings", type=Path, required=True,
                      help="Parquet file written by `avsiam embed`")
    tsne.add_argument("--out", type=Path, required=True, help="PNG to write")
    tsne.add_argument("--per-class", type=int, default=50,
                      help="at most this many clips per class (0 = all)")
    tsne.add_argument("--perplexity", type=float, default=30.0)
    tsne.add_argument("--seed", type=int, default=0)
    tsne.add_argument("--width", type=int, default=1200, help="pixels")
    tsne.add_argument("--height", type=int, default=900, help="pixels")
    tsne.add_argument("--class-names", type=Path, default=None,
                      help="class_labels_indices.csv (index,mid,display_name) for the legend")

    losses = sub.add_parser("losses", help="loss curves of one or more runs (PNG)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    losses.add_argument("metrics", type=Path, nargs="+",
                        help="metrics.jsonl files, or run folders containing one")
    losses.add_argument("--out", type=Path, required=True, help="PNG to write")
    losses.add_argument("--match", default="loss",
                        help="comma-separated words; fields containing one are plotted")
    losses.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    losses.add_argument("--width", type=int, default=1200, help="pixels")
    losses.add_argument("--height", type=int, default=500, help="pixels")


def read_class_names(path: Path) -> dict[int, str]:
    """index -> display_name from an AudioSet-style class_labels_indices.csv."""
    import csv

    with open(path, newline="") as handle:
        return {int(row["index"]): row["display_name"] for row in csv.DictReader(handle)}


def _metrics_file(path: Path) -> Path:
    return path / "metrics.jsonl" if path.is_dir() else path


def main(args: argparse.Namespace) -> int:
    if args.figure == "tsne":
        from trainer.evaluation.embeddings import read_embeddings
        from trainer.evaluation.tsne import TsneConfig, draw_tsne

        table = read_embeddings(args.embeddings)
        config = TsneConfig(per_class=args.per_class, perplexity=args.perplexity, seed=args.seed,
                            width_px=args.width, height_px=args.height)
        names = read_class_names(args.class_names) if args.class_names else None
        out = draw_tsne(table, args.out, config, names)
        print(f"t-SNE of {len(table)} clips -> {out}")
        return 0
    from trainer.evaluation.curves import draw_curves, read_series

    match = tuple(m.strip() for m in args.match.split(",") if m.strip())
    series = [read_series(_metrics_file(p), match) for p in args.metrics]
    for s in series:
        if s.bad_lines:
            print(f"{s.name}: skipped {s.bad_lines} unreadable line(s)")
    out = draw_curves(series, args.out, width_px=args.width, height_px=args.height, log_y=args.log_y)
    print(f"loss curves of {len(series)} run(s) -> {out}")
    return 0
