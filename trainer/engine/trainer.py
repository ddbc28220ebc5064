"""Pretraining on the one loop (`loop.py`): the module, the masks and the step it plugs in.

    from trainer.engine.config import load_config
    from trainer.engine.trainer import train
    summary = train(load_config("tiny_cpu", ["data.train=runs/demo/shards"]))

Every rank runs `train`; rank 0 shows the progress bar and writes metrics.
"""
from __future__ import annotations

import math

from trainer.masking import MultiRatioMasker
from trainer.model.file_metadata import loader_facts, marker_fields

from .config import PretrainConfig
from .epochs import with_epoch_steps
from .flops import train_flops_per_sample
from .loop import RunKind, RunSummary, TrainingRun, run_training
from .module import build_pretrain_module
from .step import METRIC_KEYS, MaskPlan, PretrainStep

RECORD_NAMES = {"loss": "loss", "loss_contrastive": "loss/contrastive", "contrastive_acc": "contrastive/acc",
                "loss_reconstruction": "loss/reconstruction", "loss_rec_audio": "loss/rec_audio",
                "loss_rec_visual": "loss/rec_visual"}


def train(cfg: PretrainConfig) -> RunSummary:
    return run_training(cfg, PretrainKind(cfg))


class PretrainKind(RunKind):
    name = "pretrain"
    loader_mode = "pretrain"
    metric_names = {k: RECORD_NAMES[k] for k in METRIC_KEYS}

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        obj = cfg.objective
        self.flops_per_sample = train_flops_per_sample(cfg.model, obj.mask_ratios, obj.reconstruction_ratio,
                                                       obj.uses_contrastive, obj.uses_reconstruction)

    def build_module(self):
        return build_pretrain_module(self.cfg)

    def loader_options(self) -> dict:
        return {"audio_frames": self.cfg.model.audio_frames, "image_size": self.cfg.model.image_size}

    def max_steps(self, loader) -> int:
        self.cfg = with_epoch_steps(self.cfg, len(loader))     # max_epochs: resolved (and recorded)
        return self.cfg.max_steps

    def marker(self, run: TrainingRun) -> dict:
        return marker_fields(self.cfg.model, loader_facts(run.loader))

    def make_step(self, run: TrainingRun):
        cfg, model = self.cfg, run.model
        masks = MaskPlan(
            MultiRatioMasker(ratios=cfg.objective.mask_ratios, audio_grid=model.audio_grid,
                             visual_grid=model.visual_grid, audio_mask=cfg.objective.audio_mask),
            cfg.objective.reconstruction_ratio, math.prod(model.audio_grid), math.prod(model.visual_grid),
            seed=cfg.seed, rank=run.ctx.rank, group=cfg.objective.contrastive_chunk)
        stepper = PretrainStep(run.engine, cfg.objective)

        def step(micro: list[dict], index: int, lr: float) -> dict[str, float]:
            inputs = [stepper.to_inputs(b, masks.draw(len(b["audio"]), index, i, run.engine.device))
                      for i, b in enumerate(micro)]
            return stepper.run(inputs, lr)

        return step
