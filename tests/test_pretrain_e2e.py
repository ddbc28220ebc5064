"""`avsiam pretrain` end to end on real shards (synthetic clips -> `avsiam shard`), DeepSpeed on CPU:
ZeRO 1/2/3 on 1 and 2 ranks, a stop signal with a collective checkpoint, exact resume, a world-size
change through a universal checkpoint, and `avsiam export`."""
from __future__ import annotations

import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from engine_launch import finish, kill, run, start
from trainer.engine.metrics import read_jsonl

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]

STEPS = 8
BASE = ["--config", "tiny_cpu", "model.depth=2", "model.audio_frames=128", "model.image_size=32",
        "model.decoder_depth=1", "data.batch_size=4", "data.num_workers=0", f"max_steps={STEPS}",
        "log_every=1", "optim.schedule=constant", "optim.warmup_steps=0", "optim.lr=1e-3",
        "checkpoint.every_steps=4", "checkpoint.keep=0", "progress=false", "deepspeed.precision=fp32"]


def _cli(*argv: str) -> None:
    from cluster.cli import main
    assert main(list(argv)) == 0


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """24 synthetic 2-s clips of 4 classes in 4 shards (2 frames of 32 px)."""
    root = tmp_path_factory.mktemp("pretrain_data")
    _cli("synth", "--out", str(root / "synth"), "--clips", "24", "--classes", "4", "--seconds", "2",
         "--size", "96x64", "--workers", "2", "--test-fraction", "0")
    _cli("shard", "--manifest", str(root / "synth" / "balanced_train_segments.csv"), "--labels",
         str(root / "synth" / "class_labels_indices.csv"), "--videos", str(root / "synth" / "videos"),
         "--out", str(root / "shards"), "--num-frames", "2", "--frame-size", "32",
         "--samples-per-shard", "6", "--workers", "2", "--no-progress")
    return root / "shards"


def pretrain(shards: Path, out: Path, *extra: str, nproc: int = 1, timeout: float = 240) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    run(["cluster.cli", "pretrain", *BASE, f"data.train={shards}", f"out_dir={out}", *extra], nproc,
        out / f"log{len(list(out.glob('log*')))}.txt", timeout=timeout)
    return read_jsonl(out / "metrics.jsonl")


def losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records}


def assert_learns(records: list[dict], steps: int) -> None:
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for r in records:
        for key in ("loss", "loss/contrastive", "loss/reconstruction", "loss/rec_audio", "loss/rec_visual",
                    "contrastive/acc", "grad_norm", "perf/samples_per_s", "mem/peak_gib"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (key, r)
    loss = [r["loss"] for r in records]
    assert sum(loss[-3:]) < sum(loss[:3]), f"loss does not decrease: {loss}"


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    """ZeRO-2 on 2 ranks, uninterrupted, checkpoints at steps 4 and 8."""
    out = tmp_path_factory.mktemp("reference")
    pretrain(shards, out, "deepspeed.zero_stage=2", nproc=2)
    return out


def test_zero2_two_ranks_learns_and_checkpoints(reference):
    assert_learns(read_jsonl(reference / "metrics.jsonl"), STEPS)
    for step in (4, 8):
        assert (reference / "checkpoints" / f"step_{step:08d}" / "complete.json").exists()
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))


def _rank_pid(launcher_pid: int, rank: int) -> int:
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no rank {rank} under pid {launcher_pid}")


def test_signal_to_one_rank_stops_all_with_a_checkpoint_and_resume_is_exact(shards, reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    metrics, log = out / "metrics.jsonl", out / "log_signal.txt"
    proc = start(["cluster.cli", "pretrain", *BASE, f"data.train={shards}", f"out_dir={out}",
                  "deepspeed.zero_stage=2", "checkpoint.every_steps=0"], 2, log)
    try:
        deadline = time.time() + 180
        while not (metrics.exists() and any(r["step"] >= 2 for r in read_jsonl(metrics))):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        # SIGUSR1 reaches rank 1 only: the stop must still be collective.
        os.kill(_rank_pid(proc.pid, 1), signal.SIGUSR1)
        text = finish(proc, log, timeout=180)
    finally:
        kill(proc)
    stopped = read_jsonl(metrics)[-1]["step"]
    assert "SIGUSR1 after step" in text and stopped < STEPS
    assert (out / "checkpoints" / f"step_{stopped:08d}" / "complete.json").exists()
    records = pretrain(shards, out, "deepspeed.zero_stage=2", "checkpoint.every_steps=0", "--resume", "auto",
                       nproc=2)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))      # no duplicate, no gap
    assert losses(records) == losses(read_jsonl(reference / "metrics.jsonl"))


def test_two_ranks_to_one_through_a_universal_checkpoint(shards, reference, tmp_path):
    from trainer.model import AVSiam
    source = reference / "checkpoints" / "step_00000004"
    run = tmp_path / "one_rank"
    shutil.copytree(source, run / "checkpoints" / source.name)      # resume reads only its own run
    # One step on one rank with an lr far below fp32 resolution: the weights after it are the loaded
    # ones, so they must equal the 2-rank checkpoint's; the step itself must train normally.
    records = pretrain(shards, run, "checkpoint.resume=auto", "max_steps=5", "optim.lr=1e-30")
    assert (run / "checkpoints" / "step_00000004_universal" / "complete.json").exists()
    assert [r["step"] for r in records] == [5] and math.isfinite(records[0]["loss"])
    _cli("export", "--checkpoint", str(source), "--out", str(tmp_path / "two.safetensors"))
    _cli("export", "--checkpoint", str(run / "checkpoints"), "--out", str(tmp_path / "one.safetensors"))
    two, one = (AVSiam.load(tmp_path / f"{n}.safetensors").state_dict() for n in ("two", "one"))
    assert two.keys() == one.keys()
    assert all(torch.allclose(two[k], one[k], rtol=0, atol=1e-20) for k in two)


@pytest.mark.parametrize("stage,nproc,extra", [
    (1, 1, ["objective.schedule=alternate"]),
    (1, 2, ["gradient_accumulation=2"]),
    (3, 1, ["deepspeed.grad_checkpointing=true"]),
    (3, 2, ["objective.contrastive_chunk=2", "data.num_workers=1", "data.options.raw_frames=true"]),
])
def test_zero_stage_learns(shards, tmp_path, stage, nproc, extra):
    records = pretrain(shards, tmp_path, f"deepspeed.zero_stage={stage}", "checkpoint.every_steps=0", *extra,
                       nproc=nproc)
    assert_learns(records, STEPS)
    if stage == 3:      # export consolidates a partitioned checkpoint into weights AVSiam loads
        from trainer.model import AVSiam
        _cli("export", "--checkpoint", str(tmp_path / "checkpoints"), "--out", str(tmp_path / "m.safetensors"))
        model = AVSiam.load(tmp_path / "m.safetensors")
        assert model.config.depth == 2 and model.config.audio_frames == 128
