"""The one training loop, for both kinds of run (pretraining and fine-tuning), in this process with
real DeepSpeed (CPU, gloo, one rank) on real webdataset shards: a stop signal ends the run with a
checkpoint, a resumed run ends exactly where an uninterrupted one does, and torch, numpy and
`random` are seeded by the run's seed."""
from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_loader_shards import write_split
from trainer.engine.config import load_config
from trainer.engine.loop import run_training
from trainer.engine.metrics import read_jsonl
from trainer.engine.trainer import PretrainKind
from trainer.finetune.config import load_finetune_config
from trainer.finetune.run import FinetuneKind

pytestmark = pytest.mark.e2e
torch.set_num_threads(1)

MODEL = {"size": "tiny", "depth": 1, "audio_frames": 128, "image_size": 32, "decoder_depth": 1}
COMMON = ["data.batch_size=4", "data.num_workers=0", "log_every=1", "progress=false",
          "deepspeed.precision=fp32", "checkpoint.keep=0", "checkpoint.every_steps=0"]
LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loop_shards")
    write_split(folder, [4, 4], num_frames=2, frame_size=32, fbank_frames=200)
    return folder


@pytest.fixture(autouse=True)
def launch_env():
    """Each run starts as a single process with a free port (the loop exports RANK etc.)."""
    saved = {k: os.environ.get(k) for k in LAUNCH_KEYS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def config(kind: str, shards, out, *extra: str):
    if kind == "pretrain":
        model = [f"model.{k}={v}" for k, v in MODEL.items()]
        return load_config("tiny_cpu", [*model, *COMMON, f"data.train={shards}", f"out_dir={out}",
                                        "max_steps=6", "optim.warmup_steps=0", *extra])
    model = "model={" + ", ".join(f"{k}: {v}" for k, v in MODEL.items()) + "}"
    return load_finetune_config("tiny_cpu", [model, *COMMON, "num_classes=5", f"data.train={shards}",
                                             f"out_dir={out}", "schedule.epochs=3", "average_last=2",
                                             *extra])


KINDS = {"pretrain": PretrainKind, "finetune": FinetuneKind}
RUN_FIELDS = {"loss", "lr", "grad_norm", "perf/samples_per_s", "perf/step_s", "perf/data_wait", "mem/peak_gib",
              "data/skipped"}


def run(cfg, kind_class):
    for key in LAUNCH_KEYS:
        os.environ.pop(key, None)
    return run_training(cfg, kind_class(cfg))


def signalled_at(kind_class, step_to_signal: int):
    """The kind, sending this process SIGUSR1 after `step_to_signal` (as a scheduler would)."""
    class Signalled(kind_class):
        def after_step(self, run, step):
            saved = super().after_step(run, step)
            if step == step_to_signal:
                os.kill(os.getpid(), signal.SIGUSR1)
            return saved
    return Signalled


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl")}


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_signal_stops_with_a_checkpoint_and_the_resumed_run_is_exact(kind, shards, tmp_path):
    whole = run(config(kind, shards, tmp_path / "whole"), KINDS[kind])
    assert whole.stopped == "finished"
    for record in read_jsonl(tmp_path / "whole" / "metrics.jsonl"):     # the meter's run-wide fields
        assert RUN_FIELDS <= record.keys(), RUN_FIELDS - record.keys()
    steps = whole.step
    out = tmp_path / "stopped"
    stopped = run(config(kind, shards, out), signalled_at(KINDS[kind], 3))   # mid-epoch (2 steps each)
    assert (stopped.stopped, stopped.step) == ("SIGUSR1", 3)
    assert json.loads((out / "checkpoints" / "step_00000003" / "complete.json").read_text())["step"] == 3
    assert stopped.checkpoint == str(out / "checkpoints" / "step_00000003")
    resumed = run(config(kind, shards, out, "checkpoint.resume=auto"), KINDS[kind])
    assert (resumed.stopped, resumed.step) == ("finished", steps)
    assert list(losses(out)) == list(range(1, steps + 1))          # no duplicate, no gap
    assert losses(out) == losses(tmp_path / "whole")
    if kind == "finetune":
        a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(out / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Seen(Exception):
    pass


def draws_after_setup(kind_class, cfg) -> tuple:
    """What torch, numpy and `random` give right after the loop's set-up (the run then stops)."""
    class Probe(kind_class):
        def on_start(self, run):
            raise _Seen((torch.rand(1).item(), np.random.random(), random.random()))
    with pytest.raises(_Seen) as seen:
        run(cfg, Probe)
    return seen.value.args[0]


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_torch_numpy_and_random_follow_the_seed(kind, shards, tmp_path):
    first = draws_after_setup(KINDS[kind], config(kind, shards, tmp_path / "a", "seed=3"))
    np.random.seed(12345)
    random.seed(12345)
    torch.manual_seed(12345)
    again = draws_after_setup(KINDS[kind], config(kind, shards, tmp_path / "b", "seed=3"))
    other = draws_after_setup(KINDS[kind], config(kind, shards, tmp_path / "c", "seed=4"))
    assert first == again
    assert all(x != y for x, y in zip(first, other))
