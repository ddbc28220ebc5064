"""The demo's promise on a smaller, faster configuration: synthesise -> shard -> pretrain tiny ->
retrieval on held-out clips -> fine-tune tiny -> classification on held-out clips, every stage the
`avsiam` command a user types. Held-out audio->visual class-level R@1 must reach 0.8 (chance about
1/classes) and audio-visual mAP 0.9."""
import json
import os
import subprocess
import sys

import pytest

CLASSES = 4
CLIPS = 400                # 360 train / 40 test: enough clips that a pair cannot be memorised
SECONDS = 1.0
MIN_A2V_CLASS_R1 = 0.8
MIN_AV_MAP = 0.9

# The tiny model from scratch in ~300 steps: contrastive only, no masking, a softer temperature.
PRETRAIN = ["max_steps=300", "data.batch_size=24", "data.num_workers=0", "progress=false",
            "log_every=20", "checkpoint.every_steps=0", "model.audio_frames=96", "model.depth=2",
            "objective.reconstruction_weight=0", "objective.mask_ratios=[0.0]",
            "objective.temperature=0.2", "optim.lr=1e-3", "optim.warmup_steps=10"]
FINETUNE = [f"num_classes={CLASSES}", "progress=false"]   # the rest: finetune_tiny_cpu.yaml


def _cli(*argv) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"avsiam {argv[0]} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    synth = out / "synth"
    _cli("synth", "--out", synth, "--clips", CLIPS, "--classes", CLASSES, "--seconds", SECONDS,
         "--size", "64x64", "--workers", "2", "--test-fraction", "0.1")
    shards = {}
    for split, manifest in (("train", "balanced_train_segments.csv"), ("test", "eval_segments.csv")):
        shards[split] = out / "shards" / split
        _cli("shard", "--manifest", synth / manifest, "--labels", synth / "class_labels_indices.csv",
             "--videos", synth / "videos", "--out", shards[split], "--split", split,
             "--num-frames", "4", "--frame-size", "64", "--samples-per-shard", "100",
             "--workers", "2", "--no-progress")
    _cli("pretrain", "--config", "tiny_cpu", f"data.train={shards['train']}", *PRETRAIN,
         "--out", out / "pretrain")
    _cli("eval", "retrieval", "--model", out / "pretrain", "--shards", shards["test"],
         "--per-class", "5", "--out", out / "retrieval.json")
    _cli("finetune", "--config", "tiny_cpu", f"data.train={shards['train']}", *FINETUNE,
         "--init", out / "pretrain", "--out", out / "finetune")
    _cli("eval", "classify", "--model", out / "finetune", "--shards", shards["test"],
         "--out", out / "classify.json")
    return {"retrieval": json.loads((out / "retrieval.json").read_text()),
            "classify": json.loads((out / "classify.json").read_text()),
            "test_keys": _keys(shards["test"]), "train_keys": _keys(shards["train"])}


def _keys(folder) -> set[str]:
    import pyarrow.parquet as pq
    keys = set()
    for record in folder.glob("*-*.parquet"):
        keys.update(pq.read_table(record, columns=["key"]).column("key").to_pylist())
    return keys


def test_evaluation_clips_are_held_out(demo):
    assert demo["test_keys"] and not demo["test_keys"] & demo["train_keys"]
    assert demo["classify"]["num_clips"] == len(demo["test_keys"])


def test_pretrained_audio_retrieves_visuals_of_its_class(demo):
    ret = demo["retrieval"]
    assert ret["num_classes"] == CLASSES
    assert ret["chance_class_r1"] < 0.5
    assert ret["summary"]["retrieval_a2v_class_r1"] >= MIN_A2V_CLASS_R1, ret["results"]


def test_finetuned_audio_visual_map(demo):
    summary = demo["classify"]["summary"]
    assert summary["av_map"] >= MIN_AV_MAP, summary
