"""`avsiam plot tsne|losses` on embedding files and metrics logs made here."""
import json

import numpy as np
import pytest
from PIL import Image

from cluster.cli import main as avsiam
from trainer.evaluation.curves import read_series
from trainer.evaluation.embeddings import (EmbeddingFileError, EmbeddingTable, read_embeddings,
                                           write_embeddings)
from trainer.evaluation.tsne import TsneConfig, tsne_points


def _clustered(n_per_class=8, classes=3, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 5
    labels = [[c] for c in range(classes) for _ in range(n_per_class)]
    audio = np.stack([centres[l[0]] + rng.normal(size=dim) for l in labels])
    visual = np.stack([centres[l[0]] + rng.normal(size=dim) for l in labels])
    keys = [f"k{i:03d}" for i in range(len(labels))]
    return EmbeddingTable(keys, labels, audio.astype(np.float32), visual.astype(np.float32))


def test_embedding_file_round_trip_keeps_missing_modalities(tmp_path):
    table = _clustered()
    table.audio[3] = np.nan
    table.metadata = {"frame": 5}
    back = read_embeddings(write_embeddings(tmp_path / "e.parquet", table))
    assert back.keys == table.keys and back.labels == table.labels
    assert np.isnan(back.audio[3]).all() and np.allclose(back.visual, table.visual)
    assert back.metadata == {"frame": 5} and len(back.complete()) == len(table) - 1
    with pytest.raises(EmbeddingFileError, match="avsiam embed"):
        read_embeddings(tmp_path / "missing.parquet")


def test_tsne_puts_audio_and_visual_of_a_class_together():
    table = _clustered()
    points, modality, classes = tsne_points(table, TsneConfig(per_class=0, seed=0))
    assert points.shape == (2 * len(table), 2) and modality.sum() == len(table)
    colour = np.array(classes * 2)
    centroids = np.stack([points[colour == c].mean(axis=0) for c in range(3)])
    # every point is nearer its own class centroid than any other
    nearest = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == colour).mean() > 0.95


def test_plot_tsne_writes_a_png_of_the_requested_size(tmp_path):
    write_embeddings(tmp_path / "e.parquet", _clustered())
    out = tmp_path / "fig" / "tsne.png"
    assert avsiam(["plot", "tsne", "--embeddings", str(tmp_path / "e.parquet"), "--out", str(out),
                   "--width", "640", "--height", "480"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (640, 480)


def test_plot_losses_reads_jsonl_and_skips_broken_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 2.0 / (s + 1), "loss_c": 1.0, "lr": 1e-4}) for s in range(5)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 5, \"lo")
    series = read_series(run / "metrics.jsonl")
    assert sorted(series.values) == ["loss", "loss_c"] and series.bad_lines == 1
    assert series.steps["loss"] == [0, 1, 2, 3, 4]
    out = tmp_path / "losses.png"
    assert avsiam(["plot", "losses", str(run), "--out", str(out), "--width", "800",
                   "--height", "300"]) == 0
    with Image.open(out) as image:
        assert image.size == (800, 300)
