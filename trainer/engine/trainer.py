"""The pretraining loop: build the parts, then step, log, checkpoint and stop when asked.

    from trainer.engine.config import load_config
    from trainer.engine.trainer import train
    summary = train(load_config("tiny_cpu", ["data.train=runs/demo/shards"]))

Every rank runs `train`; rank 0 shows the progress bar and writes metrics. Counters live in
`TrainState`; the loader position and RNG states travel in the checkpoint's client state.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from .config import PretrainConfig
from .distributed import DistContext, run_on_ranks

log = logging.getLogger("trainer.engine")


@dataclass
class TrainState:
    step: int = 0          # optimizer steps done
    samples: int = 0       # samples seen by all ranks

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])


@dataclass
class TrainSummary:
    step: int
    stopped: str           # "finished" | the stop reason (SIGTERM, SIGUSR1, requested)
    checkpoint: str | None
    out_dir: str


def train(cfg: PretrainConfig) -> TrainSummary:
    return run_on_ranks(cfg.device, lambda ctx: _Run(cfg, ctx).run())


class _Run:
    def __init__(self, cfg: PretrainConfig, ctx: DistContext) -> None:
        import torch

        from shards.loader import make_loader

        from .checkpoint import open_run_checkpoints
        from .deepspeed_config import create_engine
        from .epochs import with_epoch_steps
        from .module import build_pretrain_module
        from .step import MaskPlan, PretrainStep
        from trainer.masking import MultiRatioMasker

        self.cfg, self.ctx = cfg, ctx
        torch.manual_seed(cfg.seed)                # identical initial weights on every rank
        self.checkpointer, point = open_run_checkpoints(cfg, ctx)
        module = build_pretrain_module(cfg)
        self.engine = create_engine(module, cfg, ctx.world_size, ctx.device_type,
                                    load_universal=point is not None and point.universal)
        _seed_rank(cfg.seed, ctx.rank)
        self.loader = make_loader(cfg.data.train, mode="pretrain", batch_size=cfg.data.batch_size,
                                  rank=ctx.rank, world_size=ctx.world_size, num_workers=cfg.data.num_workers,
                                  seed=cfg.seed, **{"audio_frames": cfg.model.audio_frames,
                                                    "image_size": cfg.model.image_size, **cfg.data.loader_options()})
        self.cfg = cfg = with_epoch_steps(cfg, len(self.loader))
        self.state = TrainState()
        self.resumed_from = point
        if point is not None:
            self._restore(point)
        model = module.model
        self.masks = MaskPlan(
            MultiRatioMasker(ratios=cfg.objective.mask_ratios, audio_grid=model.audio_grid,
                             visual_grid=model.visual_grid, audio_mask=cfg.objective.audio_mask),
            cfg.objective.reconstruction_ratio, _count(model.audio_grid), _count(model.visual_grid),
            seed=cfg.seed, rank=ctx.rank, group=cfg.objective.contrastive_chunk)
        self.stepper = PretrainStep(self.engine, cfg.objective)

    def _restore(self, point) -> None:
        client, mine = self.checkpointer.load(self.engine, point)
        self.state.load_state_dict(client["train"])
        if mine is not None:
            self.loader.load_state_dict(mine["loader"])
        else:
            # Another world size: the in-epoch position belongs to the old one; go on at the next epoch.
            saved = client["ranks"][0]["loader"]
            self.loader.set_epoch(int(saved["epoch"]) + (1 if saved["batches"] else 0))
            log.warning("resumed on %d ranks from a %d-rank checkpoint: the data stream continues at "
                        "epoch %d", self.ctx.world_size, point.world_size, self.loader.epoch)

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainSummary:
        from .metrics import open_metrics
        from .observe import Observer
        from .schedule import lr_at
        from .signals import StopRequest

        cfg = self.cfg
        metrics = open_metrics(cfg.out_dir, self.ctx.is_main,
                               resume_step=self.state.step if self.resumed_from else None)
        observer = Observer(cfg, self.ctx, self.loader, metrics, start_step=self.state.step)
        batches = endless_batches(self.loader)
        stopped, last = "finished", None
        try:
            with StopRequest(device=self.ctx.device, run_dir=cfg.out_dir,
                             every_minutes=cfg.checkpoint.every_minutes) as stop:
                while self.state.step < cfg.max_steps:
                    observer.start_step()
                    micro = [next(batches) for _ in range(cfg.deepspeed.gradient_accumulation)]
                    observer.data_ready()
                    inputs = [self.stepper.to_inputs(b, self.masks.draw(len(b["audio"]), self.state.step, i,
                                                                        self.engine.device))
                              for i, b in enumerate(micro)]
                    lr = lr_at(self.state.step, cfg.optim, cfg.max_steps)
                    values = self.stepper.run(inputs, lr)
                    self.state.step += 1
                    self.state.samples += sum(len(b["audio"]) for b in micro) * self.ctx.world_size
                    observer.end_step(self.state.step, values, lr, self.engine.get_global_grad_norm())
                    if cfg.stop_at_step == self.state.step:
                        stop.request()
                    reason = stop.should_stop()
                    if reason is not None:
                        stopped, last = reason, self._save()
                        break
                    every = cfg.checkpoint.every_steps
                    if (every and self.state.step % every == 0) or stop.save_now:
                        last = self._save()
            if stopped == "finished" and cfg.checkpoint.save_final:
                last = self._save()
        finally:
            observer.close()
        return TrainSummary(step=self.state.step, stopped=stopped, checkpoint=str(last) if last else None,
                            out_dir=cfg.out_dir)

    def _save(self):
        from trainer.model.file_metadata import loader_facts, marker_fields
        return self.checkpointer.save(
            self.engine, self.state.step,
            client_state={"train": self.state.state_dict(), "config": self.cfg.to_dict()},
            rank_state={"loader": self.loader.state_dict()},
            marker=marker_fields(self.cfg.model, loader_facts(self.loader)))


def endless_batches(loader) -> Iterator[dict]:
    """Batches across epochs (the loader is a resumable cursor: each pass continues where the last
    stopped); raises if a whole epoch gives none."""
    while True:
        count = 0
        for batch in loader:
            count += 1
            yield batch
        if count == 0:
            raise RuntimeError("the loader yielded no batch for a whole epoch; check data.train")


def _seed_rank(seed: int, rank: int) -> None:
    import torch
    torch.manual_seed(seed * 1000 + rank + 1)
    np.random.seed((seed * 1000 + rank + 1) % 2 ** 32)
    random.seed(seed * 1000 + rank + 1)


def _count(grid: tuple[int, int]) -> int:
    return math.prod(grid)
