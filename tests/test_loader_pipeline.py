"""Integration: the loader reads real shards written by `avsiam shard` from synthetic clips."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from cluster.cli import main as avsiam
from shards import format as F
from shards.loader import make_loader

torch.set_num_threads(1)
FRAMES, SIZE = 4, 32


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    from pipeline.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("pipeline")
    synth = write_dataset(SynthConfig(out=root / "synth", clips=8, classes=3, seed=1, seconds=2.0,
                                      size=(96, 64), workers=2, test_fraction=0.0))
    code = avsiam(["shard", "--manifest", synth["balanced_train_csv"], "--labels",
                   synth["labels_csv"], "--videos", synth["videos_dir"], "--out",
                   str(root / "shards"), "--samples-per-shard", "2", "--num-frames", str(FRAMES),
                   "--frame-size", str(SIZE), "--workers", "2", "--no-progress"])
    assert code == 0
    return root / "shards"


def ok_keys(folder) -> list[str]:
    keys = []
    for record in sorted(folder.glob("train-*.parquet")):
        table = pq.read_table(record).to_pydict()
        keys += [k for k, st in zip(table["key"], table["status"]) if st == "ok"]
    return keys


def test_pretrain_reads_every_pipeline_sample(shards_dir):
    info = json.loads((shards_dir / "dataset.json").read_text())
    mean, std = info["fbank_stats"]["mean"], info["fbank_stats"]["std"]
    loader = make_loader(str(shards_dir), mode="pretrain", batch_size=2, num_workers=2, seed=0,
                         normalization="dataset")
    batches = list(loader)
    keys = [k for b in batches for k in b["keys"]]
    assert sorted(keys) == sorted(ok_keys(shards_dir)) and len(keys) == 8
    first = batches[0]
    assert first["audio"].shape == (2, 1024, 128) and first["visual"].shape == (2, 3, SIZE, SIZE)
    stored = {s["__key__"]: s for s in wds.WebDataset(str(shards_dir / "train-{000000..000003}.tar"),
                                                      shardshuffle=False)}
    fbank = np.load(io.BytesIO(stored[first["keys"][0]]["fbank.npy"]), allow_pickle=False)
    t = fbank.shape[0]
    assert 150 <= t < 1024                                  # 2 s clips: about 198 frames
    expected = (torch.from_numpy(fbank.astype(np.float32)) - mean) / std
    assert torch.allclose(first["audio"][0, :t], expected, atol=1e-5)
    assert torch.allclose(first["audio"][0, t:], torch.full((1024 - t, 128), -mean / std))


def test_fbank_normalisation_uses_the_paper_constants_unless_dataset_is_chosen(shards_dir):
    """Default: (fbank + 5.081) / 4.4849 for every split, whatever dataset.json measured."""
    info = json.loads((shards_dir / "dataset.json").read_text())
    assert abs(info["fbank_stats"]["mean"] - F.DEFAULT_FBANK_MEAN) > 0.1          # the stats differ
    paper = make_loader(str(shards_dir), mode="eval", batch_size=2, audio_frames=1024)
    measured = make_loader(str(shards_dir), mode="eval", batch_size=2, audio_frames=1024, normalization="dataset")
    assert paper.spec.norm == ((-5.081, 4.4849),)
    assert measured.spec.norm == ((info["fbank_stats"]["mean"], info["fbank_stats"]["std"]),)
    a, b = next(iter(paper)), next(iter(measured))
    t = 150                                                                     # frames of real audio
    raw = b["audio"][:, :t] * info["fbank_stats"]["std"] + info["fbank_stats"]["mean"]
    assert torch.allclose(a["audio"][:, :t], (raw + 5.081) / 4.4849, atol=1e-4)
    assert torch.allclose(a["audio"][:, -1], torch.full_like(a["audio"][:, -1], 5.081 / 4.4849))
    with pytest.raises(ValueError, match="normalization"):
        make_loader(str(shards_dir), mode="eval", batch_size=2, normalization="split")
    # the model file records the choice with the values (trainer.model.file_metadata)
    from trainer.model.file_metadata import loader_facts
    assert loader_facts(paper).normalization == {"mean": -5.081, "std": 4.4849, "source": "paper"}
    assert loader_facts(measured).normalization == {"mean": info["fbank_stats"]["mean"],
                                                    "std": info["fbank_stats"]["std"], "source": "dataset"}


def test_eval_all_frames_and_labels_from_pipeline_shards(shards_dir):
    loader = make_loader(str(shards_dir), mode="eval", batch_size=4, frames="all", audio_frames=256)
    batch = next(iter(loader))
    assert batch["visual"].shape == (4, FRAMES, 3, SIZE, SIZE)
    assert all(len(labels) >= 1 for labels in batch["labels"]) and batch["valid"].all()
    # label indices in eval (evaluation gives the model's num_classes); fine-tuning takes the
    # vocabulary's size from dataset.json
    tuned = next(iter(make_loader(str(shards_dir), mode="finetune", batch_size=4, audio_frames=256)))
    assert tuned["labels"].shape == (4, 3)
