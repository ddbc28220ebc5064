"""The one training loop of pretraining and fine-tuning.

    run_training(cfg, kind)      # every rank; kind = PretrainKind(cfg) or FinetuneKind(cfg)

What every run gets, written once here: seeding (torch for identical initial weights on every rank,
then torch + numpy + `random` per rank), the checkpointer with auto-resume (train counters, loader
position and RNG states in the client state), the engine (`deepspeed_config.create_engine`), the
loader, micro-batches per optimizer step (`gradient_accumulation`), the lr of each step, one metrics
meter (`observe.StepMeter`) with the progress bar, periodic checkpoints, stop requests (signals,
`stop_at_step`) turned into a collective checkpoint-and-stop, and the final save.

A kind of run (`RunKind`) plugs in only what differs: the module DeepSpeed wraps, its lr scales,
the loader mode and options, the step function, the run length, extra record fields, and callbacks
at start, after each step (fine-tuning's epoch ends) and at the finish (fine-tuning's averaging).
"""
from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from shards.loader import make_loader

from .checkpoint import open_run_checkpoints
from .config import RunConfig
from .deepspeed_config import create_engine
from .distributed import DistContext, run_on_ranks
from .metrics import open_metrics
from .observe import StepMeter
from .progress import Progress
from .schedule import lr_at
from .signals import StopRequest

log = logging.getLogger("trainer.engine")

StepFn = Callable[[list[dict], int, float], dict[str, float]]   # (micro-batches, step, lr) -> values


@dataclass
class TrainState:
    step: int = 0          # optimizer steps done
    samples: int = 0       # samples seen by all ranks

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])


@dataclass
class RunSummary:
    step: int
    stopped: str             # "finished" | the stop reason (SIGTERM, SIGUSR1, requested)
    checkpoint: str | None   # the last checkpoint written
    out_dir: str
    epochs_done: int | None = None   # fine-tuning
    model: str | None = None         # fine-tuning: model.safetensors once finished


class RunKind:
    """What a kind of run plugs into the loop; the defaults are the no-op hooks. `cfg`: the run's config."""

    cfg: RunConfig

    name = "run"                     # progress-bar label
    loader_mode = "pretrain"         # shards.loader mode
    same_world_size = False          # refuse checkpoints of another world size
    metric_names: Mapping[str, str] = {}   # step value key -> record name (means over the window)
    flops_per_sample: float | None = None  # model FLOPs of one training sample (MFU), if known

    def build_module(self) -> torch.nn.Module:
        """The module DeepSpeed wraps (with the model under `.model`); built right after seeding."""
        raise NotImplementedError

    def lr_scales(self) -> dict[str, float]:
        """lr multiplier per model part (trainer.model parts); missing parts train at 1x."""
        return {}

    def loader_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def max_steps(self, loader) -> int:
        """The run's optimizer steps; the kind may resolve its `cfg` here (what checkpoints record)."""
        raise NotImplementedError

    def make_step(self, run: "TrainingRun") -> StepFn:
        raise NotImplementedError

    def marker(self, run: "TrainingRun") -> dict[str, Any]:
        """Fields of each checkpoint's complete.json (the model config and facts at least)."""
        raise NotImplementedError

    def on_start(self, run: "TrainingRun") -> None:
        """Before the first step (after any restore)."""

    def record_extra(self, run: "TrainingRun", step: int) -> dict[str, Any]:
        """Fields added to the metrics record of `step`."""
        return {}

    def after_step(self, run: "TrainingRun", step: int) -> Path | None:
        """After each optimizer step; returns the checkpoint folder if it saved one."""
        return None

    def finish(self, run: "TrainingRun", summary: RunSummary) -> None:
        """After the loop, stopped or finished (`summary.stopped`; every rank); may fill in the summary."""


def run_training(cfg: RunConfig, kind: RunKind) -> RunSummary:
    """The loop on this process's rank, between process-group set-up and shutdown."""
    return run_on_ranks(cfg.device, lambda ctx: TrainingRun(cfg, ctx, kind).run())


def seed_rank(seed: int, rank: int) -> None:
    """torch, numpy and `random` seeded per rank (dropout, augmentations in the main process)."""
    value = seed * 1000 + rank + 1
    torch.manual_seed(value)
    np.random.seed(value % 2 ** 32)
    random.seed(value)


class TrainingRun:
    def __init__(self, cfg: RunConfig, ctx: DistContext, kind: RunKind) -> None:
        self.cfg, self.ctx, self.kind = cfg, ctx, kind
        torch.manual_seed(cfg.seed)                # identical initial weights on every rank
        self.checkpointer, point = open_run_checkpoints(cfg, ctx, same_world_size=kind.same_world_size)
        self.module = kind.build_module()
        self.module.model.set_grad_checkpointing(cfg.deepspeed.grad_checkpointing)
        self.engine, self.groups = create_engine(self.module, cfg, ctx.world_size, ctx.device_type,
                                                 load_universal=point is not None and point.universal,
                                                 lr_scales=kind.lr_scales())
        seed_rank(cfg.seed, ctx.rank)
        self.loader = make_loader(cfg.data.train, mode=kind.loader_mode, batch_size=cfg.data.batch_size,
                                  rank=ctx.rank, world_size=ctx.world_size, num_workers=cfg.data.num_workers,
                                  seed=cfg.seed, **{**kind.loader_options(), **cfg.data.loader_options()})
        self.max_steps = kind.max_steps(self.loader)
        self.cfg = kind.cfg                        # as the kind resolved it (e.g. max_epochs -> max_steps)
        self.state = TrainState()
        self.resumed_from = point
        if point is not None:
            self._restore(point)
        self.step_fn = kind.make_step(self)

    @property
    def model(self):
        return self.module.model

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
    def run(self) -> RunSummary:
        cfg, kind = self.cfg, self.kind
        kind.on_start(self)
        metrics = open_metrics(cfg.out_dir, self.ctx.is_main,
                               resume_step=self.state.step if self.resumed_from else None)
        meter = StepMeter(self.ctx, self.loader, kind.metric_names,
                          samples_per_step=cfg.data.batch_size * cfg.gradient_accumulation,
                          flops_per_sample=kind.flops_per_sample, peak_tflops=cfg.peak_tflops,
                          precision=cfg.deepspeed.precision)
        bar = Progress(self.max_steps, initial=self.state.step, desc=kind.name,   # plain lines off a tty
                       enabled=self.ctx.is_main and cfg.progress)
        batches = endless_batches(self.loader)
        stopped, last = "finished", None
        try:
            with StopRequest(device=self.ctx.device, run_dir=cfg.out_dir,
                             every_minutes=cfg.checkpoint.every_minutes) as stop:
                while self.state.step < self.max_steps:
                    meter.start_step()
                    micro = [next(batches) for _ in range(cfg.gradient_accumulation)]
                    meter.data_ready()
                    lr = lr_at(self.state.step, cfg.optim, self.max_steps)
                    values = self.step_fn(micro, self.state.step, lr)
                    self.state.step += 1
                    self.state.samples += sum(len(b["audio"]) for b in micro) * self.ctx.world_size
                    step = self.state.step
                    meter.add(values)
                    bar.update(1)
                    if step % cfg.log_every == 0 or step == self.max_steps:
                        record = meter.record(lr, self.engine.get_global_grad_norm())
                        record.update(kind.record_extra(self, step))
                        metrics.log(step, record)
                        bar.report(loss=f"{record['loss']:.3f}", sps=f"{record['perf/samples_per_s']:.1f}")
                    last = kind.after_step(self, step) or last
                    every = cfg.checkpoint.every_steps
                    if every and step % every == 0:
                        last = self.save()
                    if cfg.stop_at_step == step:
                        stop.request()
                    reason = stop.should_stop()          # collective: every rank, every step
                    if reason is not None and step < self.max_steps:
                        stopped, last = reason, self.save()
                        break
                    if stop.save_now:                    # checkpoint.every_minutes
                        last = self.save()
            if stopped == "finished" and cfg.checkpoint.save_final:
                last = self.save()
        finally:
            bar.close()
            metrics.close()
        summary = RunSummary(step=self.state.step, stopped=stopped, checkpoint=str(last) if last else None,
                             out_dir=cfg.out_dir)
        kind.finish(self, summary)
        return summary

    def save(self) -> Path:
        """Collective checkpoint of this step (returns the existing folder if it is already saved)."""
        return self.checkpointer.save(
            self.engine, self.state.step,
            client_state={"train": self.state.state_dict(), "config": self.cfg.to_dict()},
            rank_state={"loader": self.loader.state_dict()},
            marker=self.kind.marker(self))


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
