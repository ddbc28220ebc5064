"""One t-SNE picture of audio and visual embeddings, coloured by class (the paper's Figure 4).

Audio and visual vectors are L2-normalised and embedded TOGETHER, so a shared space shows as audio
(circles) and visual (triangles) points of a class falling into the same cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.evaluation.embeddings import EmbeddingTable
from trainer.evaluation.retrieval import select_per_class

MAX_LEGEND_CLASSES = 30


@dataclass(kw_only=True)
class TsneConfig:
    """How the picture is made."""

    per_class: int = 50
    """At most this many clips per class (deterministic choice, as for retrieval); 0 = all clips."""
    perplexity: float = 30.0
    """Lowered automatically to (points - 1) / 3 for small sets."""
    seed: int = 0
    width_px: int = 1200
    height_px: int = 900
    dpi: int = 150
    title: str = "t-SNE of audio (o) and visual (^) embeddings"

    def __post_init__(self) -> None:
        if self.per_class < 0 or self.perplexity <= 0 or self.dpi < 10:
            raise ValueError("per_class must be >= 0, perplexity > 0 and dpi >= 10")
        if self.width_px < 100 or self.height_px < 100:
            raise ValueError(f"the picture must be at least 100x100 pixels, got "
                             f"{self.width_px}x{self.height_px}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tsne_points(table: EmbeddingTable, config: TsneConfig) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """2-D points of [audio; visual] (2N x 2), the modality of each (0 audio, 1 visual), and each
    clip's colour class (its first label)."""
    from sklearn.manifold import TSNE

    table = table.complete()
    if len(table) < 3:
        raise ValueError(f"t-SNE needs at least 3 clips with both modalities, got {len(table)}")
    if config.per_class:
        table = table.subset(select_per_class(table.keys, table.labels, config.per_class,
                                              config.seed).indices)
    vectors = np.concatenate([_unit(table.audio), _unit(table.visual)]).astype(np.float64)
    perplexity = min(config.perplexity, max(1.0, (len(vectors) - 1) / 3))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=config.seed,
                  max_iter=1000).fit_transform(vectors)
    modality = np.repeat([0, 1], len(table))
    classes = [l[0] if l else -1 for l in table.labels]
    return points, modality, classes


def draw_tsne(table: EmbeddingTable, out: str | Path, config: TsneConfig | None = None,
              class_names: dict[int, str] | None = None) -> Path:
    """Write the PNG (exactly width_px x height_px) and return its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    config = config or TsneConfig()
    points, modality, classes = tsne_points(table, config)
    colour_of = np.array(classes * 2)
    distinct = sorted(set(classes))
    cmap = plt.get_cmap("tab20" if len(distinct) > 10 else "tab10")
    fig = plt.figure(figsize=(config.width_px / config.dpi, config.height_px / config.dpi),
                     dpi=config.dpi)
    ax = fig.add_axes((0.03, 0.04, 0.62, 0.89))
    handles = []
    for rank, c in enumerate(distinct):
        colour = cmap(rank % cmap.N)
        for mod, marker in ((0, "o"), (1, "^")):
            sel = (colour_of == c) & (modality == mod)
            ax.scatter(points[sel, 0], points[sel, 1], s=14, marker=marker, color=colour, alpha=0.8,
                       edgecolors="none")
        name = (class_names or {}).get(c, f"class {c}")
        handles.append(Patch(color=colour, label=name if len(name) <= 38 else name[:37] + "..."))
    handles += [Line2D([], [], marker="o", color="grey", linestyle="", label="audio"),
                Line2D([], [], marker="^", color="grey", linestyle="", label="visual")]
    ax.set_title(config.title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(distinct) <= MAX_LEGEND_CLASSES:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.66, 0.5), fontsize=6,
                   frameon=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=config.dpi)
    plt.close(fig)
    tmp.replace(out)
    return out
