"""`max_epochs`: max_steps from the shards' records and the global batch, so the multi-step
milestones land on the paper's epochs (10/15/20 of 25) for any dataset size and GPU count."""
from __future__ import annotations

import re

import pytest

from test_pretrain_e2e import pretrain, shards  # noqa: F401  (shards: the module's fixture)
from trainer.engine.config import load_config
from trainer.engine.epochs import with_epoch_steps
from trainer.engine.schedule import lr_at


@pytest.mark.parametrize("clips,gpus", [(1_772_023, 16), (1_200_000, 8), (20_000, 1)])
def test_paper_presets_halve_the_lr_after_epochs_10_15_and_20_for_any_size_and_gpu_count(clips, gpus):
    cfg = load_config("avsiam_base")
    assert cfg.max_epochs == 25 and cfg.max_steps is None
    batches = clips // (cfg.data.batch_size * gpus)          # the loader's batches per epoch and rank
    run = with_epoch_steps(cfg, batches)
    assert run.steps_per_epoch == batches and run.max_steps == 25 * batches
    lr = cfg.optim.lr
    for epoch, factor in ((10, 0.5), (15, 0.25), (20, 0.125)):
        first = epoch * batches                               # the first step of epoch `epoch` (0-based)
        assert lr_at(first - 1, run.optim, run.max_steps) == pytest.approx(lr * factor * 2)
        assert lr_at(first, run.optim, run.max_steps) == pytest.approx(lr * factor)


def test_gradient_accumulation_counts_optimizer_steps_and_step_counts_stay_possible():
    cfg = load_config("avsiam_base", ["gradient_accumulation=4"])
    assert with_epoch_steps(cfg, 1000).max_steps == 25 * 250
    steps = load_config("avsiam_base", ["max_epochs=null", "max_steps=500"])
    assert with_epoch_steps(steps, 1000).max_steps == 500
    with pytest.raises(ValueError, match=re.escape("max_steps=500 and max_epochs=25 are both set")):
        load_config("avsiam_base", ["max_steps=500"])
    with pytest.raises(ValueError, match="makes no optimizer step"):
        with_epoch_steps(cfg, 3)


@pytest.mark.multiproc
@pytest.mark.e2e
def test_a_run_in_epochs_takes_its_length_from_the_shards(shards, tmp_path):  # noqa: F811
    # 24 clips / (batch 4 x 1 rank) = 6 steps per epoch; 2 epochs; lr halved after epoch 1
    records = pretrain(shards, tmp_path, "max_steps=null", "max_epochs=2", "optim.schedule=multistep",
                       "optim.milestones=[0.5]", "checkpoint.every_steps=0")
    assert [r["step"] for r in records] == list(range(1, 13))
    lrs = {r["step"]: r["lr"] for r in records}
    assert lrs[6] == pytest.approx(1e-3) and lrs[7] == pytest.approx(5e-4)
