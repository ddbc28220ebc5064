"""`avsiam finetune` end to end on real shards with real DeepSpeed (CPU, gloo): head mix, lr
multipliers, epoch schedule, weight averaging, frozen decoder, exact resume after a stop."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cluster.cli import main as avsiam
from shards.format import brace_pattern

pytestmark = pytest.mark.e2e

CLASSES = 3
LR = 3e-4           # finetune_tiny_cpu.yaml
HEAD_MULT = 10.0    # finetune_tiny_cpu.yaml heads.head_lr_mult / fusion_lr_mult


def _cli(*argv, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run (A) and one stopped at step 4 then resumed (B), from the same start."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("finetune")
    synth, shards = root / "synth", root / "shards"
    _cli("synth", "--out", synth, "--clips", "12", "--classes", CLASSES, "--seconds", "2",
         "--size", "96x64", "--workers", "2", "--test-fraction", "0")
    _cli("shard", "--manifest", synth / "balanced_train_segments.csv", "--labels",
         synth / "class_labels_indices.csv", "--videos", synth / "videos", "--out", shards,
         "--split", "train", "--num-frames", "3", "--frame-size", "64", "--samples-per-shard", "6",
         "--workers", "2", "--no-progress")
    from trainer.model import AVSiam
    torch.manual_seed(0)
    # 5 classes: fine-tuning must put fresh 3-class heads on it
    AVSiam(size="tiny", num_classes=5, audio_frames=192, image_size=64, depth=2,
           decoder_depth=1).save(root / "init.safetensors")
    common = ["--config", "tiny_cpu", "--init", root / "init.safetensors", f"num_classes={CLASSES}",
              f"data.train={brace_pattern(shards, 'train', 2)}", "data.batch_size=4",
              "data.num_workers=0", "schedule.epochs=2", "schedule.decay_start=1", "average_last=2",
              "log_every=1", "progress=false"]
    _cli("finetune", *common, "--out", root / "a")
    _cli("finetune", *common, "stop_at_step=4", "--out", root / "b")
    stopped = not (root / "b" / "model.safetensors").exists()
    _cli("finetune", *common, "--out", root / "b", "--resume", "auto")
    return {"root": root, "a": root / "a", "b": root / "b", "stopped_early": stopped,
            "shards": brace_pattern(shards, "train", 2)}


def test_model_is_the_average_of_the_last_epochs(runs):
    summary = json.loads((runs["a"] / "finetune.json").read_text())
    assert summary["averaged_epochs"] == ["epoch_001.safetensors", "epoch_002.safetensors"]
    assert summary["steps"] == 2 * summary["steps_per_epoch"] == 6
    model = load_file(str(runs["a"] / "model.safetensors"))
    e1 = load_file(str(runs["a"] / "epochs" / "epoch_001.safetensors"))
    e2 = load_file(str(runs["a"] / "epochs" / "epoch_002.safetensors"))
    name = "blocks.0.attn.qkv.weight" if "blocks.0.attn.qkv.weight" in model else next(iter(model))
    assert not torch.equal(e1[name], e2[name])
    for key in model:
        assert torch.allclose(model[key], (e1[key] + e2[key]) / 2, atol=1e-6), key


def test_heads_are_fresh_the_decoder_frozen_and_the_backbone_trained(runs):
    init = load_file(str(runs["root"] / "init.safetensors"))
    model = load_file(str(runs["a"] / "model.safetensors"))
    assert model["head_av.fc.weight"].shape[0] == CLASSES and init["head_av.fc.weight"].shape[0] == 5
    decoder = [k for k in model if k.startswith("decoder.")]
    assert decoder and all(torch.equal(model[k], init[k]) for k in decoder)
    moved = [k for k in model if k.startswith("blocks.") and not torch.equal(model[k], init[k])]
    assert moved, "the backbone did not change"


def test_metrics_show_the_head_mix_and_the_lr_multipliers_and_decay(runs):
    records = [json.loads(line) for line in (runs["a"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    heads = {k for r in records for k in r if k.startswith("loss/")}
    assert heads <= {"loss/audio_visual", "loss/audio", "loss/visual"} and heads
    for r in records:
        decayed = LR * (0.75 if r["step"] > 3 else 1.0)   # epoch 2 (0-based 1) is decayed
        assert r["lr/backbone"] == pytest.approx(decayed)
        assert r["lr/head"] == pytest.approx(decayed * HEAD_MULT)
        assert r["lr/fusion"] == pytest.approx(decayed * HEAD_MULT)


def test_a_stopped_and_resumed_run_ends_with_the_same_weights(runs):
    assert runs["stopped_early"], "stop_at_step=4 did not stop the run before it finished"
    a = load_file(str(runs["a"] / "model.safetensors"))
    b = load_file(str(runs["b"] / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key


def test_eval_classify_reads_the_run_folder(runs, tmp_path):
    out = tmp_path / "cls.json"
    assert avsiam(["eval", "classify", "--model", str(runs["a"]), "--shards", runs["shards"],
                   "--out", str(out), "--frames", "middle"]) == 0
    result = json.loads(out.read_text())
    assert result["num_clips"] == 12 and 0.0 <= result["summary"]["av_map"] <= 1.0


def test_fusion_blocks_move_about_their_lr_multiplier_faster_than_the_backbone(runs):
    """Adam's steps scale with the lr: fusion weights (x10) move far more than encoder blocks (x1),
    which shows the multiplier reached the optimizer group that holds them."""
    init = load_file(str(runs["root"] / "init.safetensors"))
    model = load_file(str(runs["a"] / "epochs" / "epoch_001.safetensors"))

    def mean_change(prefix):
        keys = [k for k in model if k.startswith(prefix) and model[k].ndim > 1]
        return sum(float((model[k] - init[k]).abs().mean()) for k in keys) / len(keys)

    assert mean_change("fusion.") > 4 * mean_change("blocks.")
