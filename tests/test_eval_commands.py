"""`avsiam eval classify|retrieval`, `avsiam embed` and `avsiam plot tsne` on real shards made by
`avsiam synth` + `avsiam shard`, with a randomly initialised tiny model saved as safetensors."""
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from cluster.cli import main as avsiam
from shards.format import brace_pattern
from trainer.evaluation.embeddings import read_embeddings

pytestmark = pytest.mark.e2e

CLASSES = 3
FRAMES = 4


def _cli(*argv: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *argv], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Shards of 12 synthetic 2-s clips (4 frames of 64 px) and a random tiny model for them."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaldata")
    synth = root / "synth"
    _cli("synth", "--out", str(synth), "--clips", "12", "--classes", str(CLASSES), "--seconds", "2",
         "--size", "96x64", "--workers", "2", "--test-fraction", "0")
    shards = root / "shards"
    _cli("shard", "--manifest", str(synth / "balanced_train_segments.csv"), "--labels",
         str(synth / "class_labels_indices.csv"), "--videos", str(synth / "videos"), "--out",
         str(shards), "--split", "train", "--num-frames", str(FRAMES), "--frame-size", "64",
         "--samples-per-shard", "6", "--workers", "2", "--no-progress")
    from trainer.model import AVSiam
    torch.manual_seed(0)
    model = AVSiam(size="tiny", num_classes=CLASSES, audio_frames=192, image_size=64, depth=2,
                   decoder_depth=1)
    model.save(root / "model.safetensors")
    keys = set()
    for part in sorted(shards.glob("train-*.parquet")):
        keys.update(pq.read_table(part, columns=["key"]).column("key").to_pylist())
    return {"root": root, "shards": brace_pattern(shards, "train", 2), "model": root / "model.safetensors",
            "keys": keys}


def _run(*argv) -> None:
    assert avsiam([str(a) for a in argv]) == 0


def test_classify_reports_every_input_mode_and_matches_sklearn(data, tmp_path):
    out = tmp_path / "cls.json"
    _run("eval", "classify", "--model", data["model"], "--shards", data["shards"], "--out", out,
         "--batch-size", "4")
    result = json.loads(out.read_text())
    assert result["num_clips"] == len(data["keys"]) and result["num_frames"] == FRAMES
    assert set(result["results"]) == {"audio", "visual/single", "visual/averaged",
                                      "audio_visual/single", "audio_visual/averaged"}
    for key in ("audio_map", "visual_map", "av_map", "av_map_single", "audio_top1", "av_dprime"):
        assert key in result["summary"]
    assert "mAP" in out.with_suffix(".txt").read_text()

    # the audio mAP is sklearn's per-class AP of the model's own sigmoid outputs on the clips
    from trainer.evaluation.inputs import EvalInputs, eval_loader
    from trainer.model.source import load_model
    model = load_model(data["model"])
    loader = eval_loader(EvalInputs(model=str(data["model"]), shards=data["shards"]), model,
                         "middle", with_classes=True)
    scores, targets = [], []
    with torch.no_grad():
        for batch in loader:
            keep = batch["valid"]
            scores.append(torch.sigmoid(model.classify(audio=batch["audio"][keep])).numpy())
            targets.append(batch["labels"][keep].numpy())
    scores, targets = np.concatenate(scores), np.concatenate(targets)
    want = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(CLASSES)
                    if targets[:, c].any()])
    assert result["summary"]["audio_map"] == pytest.approx(want, abs=1e-6)


def test_classify_middle_frame_only(data, tmp_path):
    out = tmp_path / "cls.json"
    _run("eval", "classify", "--model", data["model"], "--shards", data["shards"], "--out", out,
         "--frames", "middle", "--modes", "visual", "--activation", "softmax")
    result = json.loads(out.read_text())
    assert list(result["results"]) == ["visual/single"] and result["num_frames"] == 1
    assert set(result["summary"]) == {"visual_map", "visual_mauc", "visual_dprime", "visual_top1"}


def test_embed_writes_one_row_per_clip_and_retrieval_agrees_from_both_sources(data, tmp_path):
    emb = tmp_path / "emb.parquet"
    _run("embed", "--model", data["model"], "--shards", data["shards"], "--out", emb)
    table = read_embeddings(emb)
    assert len(table) == len(data["keys"]) and set(table.keys) == data["keys"]
    assert table.audio.shape == (len(table), 192) and table.visual.shape == (len(table), 192)
    assert all(len(l) >= 1 and max(l) < CLASSES for l in table.labels)
    assert np.isfinite(table.audio).all() and np.isfinite(table.visual).all()

    direct, cached = tmp_path / "direct.json", tmp_path / "cached.json"
    _run("eval", "retrieval", "--model", data["model"], "--shards", data["shards"], "--out", direct,
         "--per-class", "2")
    _run("eval", "retrieval", "--embeddings", emb, "--out", cached, "--per-class", "2")
    a, b = json.loads(direct.read_text()), json.loads(cached.read_text())
    assert a["results"] == pytest.approx(b["results"])
    assert a["num_clips"] <= 2 * CLASSES and a["subset"]["per_class"] == 2
    for key in ("retrieval_a2v_r1", "retrieval_v2a_r1", "retrieval_a2v_class_r1", "retrieval_a2v_medr"):
        assert key in a["summary"]
    assert 1 <= a["results"]["a2v_medr"] <= a["num_clips"]

    png = tmp_path / "tsne.png"
    _run("plot", "tsne", "--embeddings", emb, "--out", png, "--width", "600", "--height", "400")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (600, 400)


def test_unreadable_model_sources_are_clear_errors(tmp_path, capsys):
    from trainer.model.source import ModelSourceError, load_model

    with pytest.raises(ModelSourceError, match="no such model"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ModelSourceError, match="complete checkpoint"):
        load_model(tmp_path)
    assert avsiam(["eval", "retrieval", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "--embeddings" in err and len(err.strip().splitlines()) == 1
