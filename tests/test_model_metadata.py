"""Model files describe their training data (issue 16): normalisation, label vocabulary, input sizes
and the model config as plain JSON in the safetensors header; evaluation uses them (the model's
normalisation by default, the vocabulary mapped by id or refused, a warning on resized inputs)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.cli import main as avsiam
from fixtures import tiny_shards
from trainer.model import AVSiam
from trainer.model.file_metadata import ModelFacts

CLASSES = 3


def _cli(*argv: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """9 synthetic 2-s clips of 3 classes in 2 shards (2 frames of 32 px)."""
    return tiny_shards(tmp_path_factory.mktemp("metadata_data"), classes=CLASSES)


def _vocabulary(shards: Path) -> dict:
    labels = json.loads((shards / "dataset.json").read_text())["labels"]
    return {"ids": labels["ids"], "names": labels["names"]}


def _model(image_size: int = 32, seed: int = 0) -> AVSiam:
    torch.manual_seed(seed)
    return AVSiam(size="tiny", num_classes=CLASSES, audio_frames=192, image_size=image_size, depth=1,
                  decoder_depth=1).eval()


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_metadata_round_trip_as_plain_json(tmp_path):
    model = _model()
    facts = ModelFacts(normalization={"mean": -4.5, "std": 3.25},
                       labels={"ids": ["/m/a", "/m/b", "/m/c"], "names": ["A", "B", "C"]})
    model.facts = facts
    model.save(tmp_path / "m.safetensors")
    header = _header(tmp_path / "m.safetensors")
    assert json.loads(header["normalization"]) == {"mean": -4.5, "std": 3.25}
    assert json.loads(header["labels"]) == facts.labels
    assert json.loads(header["audio_frames"]) == 192 and json.loads(header["frame_size"]) == 32
    assert json.loads(header["avsiam_config"])["depth"] == 1
    assert AVSiam.load(tmp_path / "m.safetensors").facts == facts
    # fresh heads for another label set: the old vocabulary no longer describes them
    assert AVSiam.load(tmp_path / "m.safetensors", num_classes=5).facts.labels is None


@pytest.mark.e2e
@pytest.mark.e2e
def test_pretrain_checkpoint_and_export_record_the_training_facts(shards, tmp_path):
    run = tmp_path / "run"
    _cli("pretrain", "--config", "tiny_cpu", f"data.train={shards}", f"out_dir={run}", "max_steps=2",
         "model.depth=1", "model.audio_frames=64", "model.image_size=32", "data.batch_size=3",
         "data.options.fbank_mean=-4.25", "data.options.fbank_std=3.5", "progress=false",
         "checkpoint.every_steps=0")
    marker = json.loads(next(run.glob("checkpoints/step_*/complete.json")).read_text())
    assert isinstance(marker["model_config"], dict) and marker["model_config"]["depth"] == 1
    assert marker["model_facts"] == {"normalization": {"mean": -4.25, "std": 3.5, "source": "given"},
                                     "labels": _vocabulary(shards)}
    out = tmp_path / "model.safetensors"
    assert avsiam(["export", "--checkpoint", str(run / "checkpoints"), "--out", str(out)]) == 0
    header = _header(out)
    assert json.loads(header["normalization"]) == {"mean": -4.25, "std": 3.5, "source": "given"}
    assert json.loads(header["labels"])["ids"] == _vocabulary(shards)["ids"]
    assert json.loads(header["audio_frames"]) == 64


@pytest.mark.e2e
def test_eval_uses_the_model_normalisation_unless_an_option_names_one(shards, tmp_path):
    from trainer.evaluation.inputs import EvalInputs, eval_loader
    model = _model()
    model.facts = ModelFacts(normalization={"mean": 1.5, "std": 2.5})
    loader = eval_loader(EvalInputs(model="m", shards=str(shards)), model, "middle", with_classes=True)
    assert (loader.spec.cfg.fbank_mean, loader.spec.cfg.fbank_std) == (1.5, 2.5)
    inputs = EvalInputs(model="m", shards=str(shards), loader_options={"fbank_mean": -3.0, "fbank_std": 4.0})
    loader = eval_loader(inputs, model, "middle", with_classes=True)
    assert (loader.spec.cfg.fbank_mean, loader.spec.cfg.fbank_std) == (-3.0, 4.0)


@pytest.mark.e2e
def test_a_permuted_vocabulary_is_mapped_by_label_id(shards, tmp_path):
    """The same model with its classes stored in another order scores the same mAP."""
    vocab = _vocabulary(shards)
    model = _model()
    model.facts = ModelFacts(labels=vocab)
    model.save(tmp_path / "a.safetensors")
    perm = [2, 0, 1]
    with torch.no_grad():
        for head in (model.head_a, model.head_v, model.head_av):
            head.fc.weight.copy_(head.fc.weight[perm].clone())
            head.fc.bias.copy_(head.fc.bias[perm].clone())
    model.facts = ModelFacts(labels={"ids": [vocab["ids"][i] for i in perm],
                                     "names": [vocab["names"][i] for i in perm]})
    model.save(tmp_path / "b.safetensors")
    maps = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        assert avsiam(["eval", "classify", "--model", str(tmp_path / f"{name}.safetensors"), "--shards",
                       str(shards), "--out", str(out), "--frames", "middle", "--batch-size", "4"]) == 0
        maps.append(json.loads(out.read_text())["summary"])
    for key in ("audio_map", "visual_map", "av_map"):
        assert maps[0][key] == pytest.approx(maps[1][key], abs=1e-6)


@pytest.mark.e2e
def test_a_foreign_vocabulary_is_refused_in_one_line(shards, tmp_path, capsys):
    model = _model()
    model.facts = ModelFacts(labels={"ids": ["/m/x", "/m/y", "/m/z"], "names": ["X", "Y", "Z"]})
    model.save(tmp_path / "m.safetensors")
    out = tmp_path / "r.json"
    assert avsiam(["eval", "classify", "--model", str(tmp_path / "m.safetensors"), "--shards", str(shards),
                   "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not trained on" in err and not out.exists()


@pytest.mark.e2e
def test_resized_frames_are_announced(shards, caplog):
    from trainer.evaluation.inputs import EvalInputs, eval_loader
    with caplog.at_level(logging.WARNING, logger="trainer.model"):
        eval_loader(EvalInputs(model="m", shards=str(shards)), _model(image_size=48), "middle",
                    with_classes=False)
    assert "32-px frames; the model takes 48 px" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.model"):
        eval_loader(EvalInputs(model="m", shards=str(shards)), _model(), "middle", with_classes=False)
    assert "resized" not in caplog.text and "cropped" not in caplog.text
