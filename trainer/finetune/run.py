"""The fine-tuning loop on the pretraining engine's parts.

Reused from `trainer.engine`: process groups, the DeepSpeed config, checkpoints with completion
markers and auto-resume, metric sinks, stop signals, the lr function and `avsiam export`'s
consolidation. Added here: epochs (len(loader) steps each), the head mix, lr multipliers, the
per-epoch fp32 weights (`epochs/epoch_NNN.safetensors`, for the last `average_last` epochs) and
their average, `model.safetensors`, written when the run finishes.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import FinetuneConfig

log = logging.getLogger("trainer.finetune")


@dataclass
class FinetuneSummary:
    step: int
    epochs_done: int
    stopped: str            # finished | the stop reason
    model: str | None       # model.safetensors when finished
    out_dir: str


def finetune(cfg: FinetuneConfig) -> FinetuneSummary:
    from trainer.engine.distributed import run_on_ranks

    return run_on_ranks(cfg.device, lambda ctx: _Run(cfg, ctx).run())


def epoch_file(cfg: FinetuneConfig, epoch: int) -> Path:
    """Weights after `epoch` (1-based) epochs."""
    return cfg.epochs_dir / f"epoch_{epoch:03d}.safetensors"


def create_finetune_engine(module, cfg: FinetuneConfig, world_size: int, device_type: str,
                           load_universal: bool = False):
    """DeepSpeed engine with the engine's derived config and the fine-tuning parameter groups."""
    import deepspeed

    from trainer.engine.deepspeed_config import derive_deepspeed_config

    from .module import param_groups

    groups = param_groups(module, cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=[{k: v for k, v in g.items() if k != "name"} for g in groups],
        config=derive_deepspeed_config(cfg, world_size, device_type, load_universal))
    engine.train()
    return engine, [(g["name"], g["lr_scale"]) for g in groups]


class _Run:
    def __init__(self, cfg: FinetuneConfig, ctx) -> None:
        import torch

        from shards.loader import make_loader
        from trainer.engine.checkpoint import open_run_checkpoints
        from trainer.engine.trainer import TrainState
        from trainer.evaluation.shard_fit import normalization_options

        from .heads import HeadSchedule
        from .module import FinetuneModule, build_finetune_model
        from .step import FinetuneStep

        self.cfg, self.ctx = cfg, ctx
        torch.manual_seed(cfg.seed)
        # The per-rank loader positions must match: no resuming on another world size.
        self.checkpointer, point = open_run_checkpoints(cfg, ctx, same_world_size=True)
        self.model = build_finetune_model(cfg)
        self.model.set_grad_checkpointing(cfg.deepspeed.grad_checkpointing)
        self.engine, self.groups = create_finetune_engine(
            FinetuneModule(self.model), cfg, ctx.world_size, ctx.device_type,
            point is not None and point.universal)
        torch.manual_seed(cfg.seed * 1000 + ctx.rank + 1)
        mc = self.model.config
        self.loader = make_loader(cfg.data.train, mode="finetune", batch_size=cfg.data.batch_size,
                                  rank=ctx.rank, world_size=ctx.world_size,
                                  num_workers=cfg.data.num_workers, seed=cfg.seed,
                                  **{"audio_frames": mc.audio_frames, "image_size": mc.image_size,
                                     "num_classes": cfg.num_classes,
                                     "require_labels": cfg.loss == "ce",
                                     **normalization_options(self.model.facts, cfg.data.loader_options()),
                                     **cfg.data.loader_options()})
        self.steps_per_epoch = len(self.loader)
        self.max_steps = cfg.schedule.epochs * self.steps_per_epoch
        self.state = TrainState()
        self.resumed = point is not None
        if point is not None:
            client, mine = self.checkpointer.load(self.engine, point)
            self.state.load_state_dict(client["train"])
            self.loader.load_state_dict(mine["loader"])
        self.resume_point = point
        self.stepper = FinetuneStep(self.engine, HeadSchedule(cfg.heads.mix, cfg.seed), cfg.loss,
                                    [scale for _, scale in self.groups])

    # ------------------------------------------------------------------ loop
    def run(self) -> FinetuneSummary:
        from tqdm import tqdm

        from trainer.engine.metrics import open_metrics
        from trainer.engine.schedule import lr_at
        from trainer.engine.signals import StopRequest
        from trainer.engine.trainer import endless_batches

        from .metrics import StepMeter

        cfg, started = self.cfg, time.time()
        self._repair_epoch_file()
        metrics = open_metrics(cfg.out_dir, self.ctx.is_main,
                               resume_step=self.state.step if self.resumed else None)
        meter = StepMeter(self.ctx, self.loader, cfg.data.batch_size)
        bar = tqdm(total=self.max_steps, initial=self.state.step, desc="finetune", unit="step",
                   disable=not (self.ctx.is_main and cfg.progress), dynamic_ncols=True, file=sys.stderr)
        batches = endless_batches(self.loader)
        stopped = "finished"
        try:
            with StopRequest(device=self.ctx.device, run_dir=cfg.out_dir,
                             every_minutes=cfg.checkpoint.every_minutes) as stop:
                while self.state.step < self.max_steps:
                    batch = next(batches)
                    lr = lr_at(self.state.step, cfg.optim, self.max_steps)
                    values = self.stepper.run(batch, self.state.step, lr)
                    self.state.step += 1
                    self.state.samples += len(batch["audio"]) * self.ctx.world_size
                    meter.add(values)
                    bar.update(1)
                    step = self.state.step
                    if step % cfg.log_every == 0 or step == self.max_steps:
                        record = meter.record(lr, self.engine.get_global_grad_norm())
                        record["epoch"] = step / self.steps_per_epoch
                        record.update(self._group_lrs())
                        metrics.log(step, record)
                        bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
                    if step % self.steps_per_epoch == 0:
                        self._end_epoch(step // self.steps_per_epoch)
                    elif cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                        self._save()
                    if cfg.stop_at_step == step:
                        stop.request()
                    reason = stop.should_stop()
                    if reason is not None and step < self.max_steps:
                        stopped = reason
                        self._save()
                        break
                    if stop.save_now:            # (a step saved above is not saved twice)
                        self._save()
        finally:
            bar.close()
            metrics.close()
        model = self._finish(started) if stopped == "finished" else None
        return FinetuneSummary(step=self.state.step, epochs_done=self.state.step // self.steps_per_epoch,
                               stopped=stopped, model=str(model) if model else None, out_dir=cfg.out_dir)

    def _group_lrs(self) -> dict[str, float]:
        """The lr each part's optimizer group holds now: lr/backbone, lr/head, lr/fusion."""
        out = {}
        for (name, _), group in zip(self.groups, self.engine.optimizer.param_groups):
            out.setdefault(f"lr/{name.split('/')[0]}", float(group["lr"]))
        return out

    # ------------------------------------------------------------ epochs
    def _save(self) -> Path:
        from trainer.model.file_metadata import loader_facts, marker_fields
        return self.checkpointer.save(
            self.engine, self.state.step,
            client_state={"train": self.state.state_dict(), "config": self.cfg.to_dict()},
            rank_state={"loader": self.loader.state_dict()},
            marker={**marker_fields(self.model.config, loader_facts(self.loader)), "task": "finetune"})

    def _end_epoch(self, epoch: int) -> None:
        """Checkpoint; the fp32 weights of the epochs that enter the average."""
        from trainer.engine.distributed import on_main_rank
        from trainer.engine.export import export_weights

        folder = self._save()
        if epoch > self.cfg.schedule.epochs - self.cfg.average_last:
            on_main_rank(self.ctx.is_main, lambda: export_weights(folder, epoch_file(self.cfg, epoch)))

    def _repair_epoch_file(self) -> None:
        """A run killed between an epoch's checkpoint and its weights file resumes at that epoch
        boundary: write the file from the checkpoint now."""
        from trainer.engine.checkpoint import tag_of
        from trainer.engine.distributed import on_main_rank
        from trainer.engine.export import export_weights

        point, step = self.resume_point, self.state.step
        if point is None or step == 0 or step % self.steps_per_epoch:
            return
        epoch = step // self.steps_per_epoch
        if epoch > self.cfg.schedule.epochs - self.cfg.average_last:
            target = epoch_file(self.cfg, epoch)
            on_main_rank(self.ctx.is_main, lambda: target.is_file() or
                         export_weights(point.root / tag_of(step), target))

    def _finish(self, started: float) -> Path | None:
        """model.safetensors = the average of the last `average_last` epoch weights (rank 0)."""
        from trainer.engine.distributed import on_main_rank

        from .averaging import average_checkpoints

        out = Path(self.cfg.out_dir) / "model.safetensors"

        def average() -> None:
            epochs = self.cfg.schedule.epochs
            files = [epoch_file(self.cfg, e) for e in range(epochs - self.cfg.average_last + 1, epochs + 1)]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"epoch weights {missing} are missing: was epochs/ deleted? "
                                        f"Re-run with checkpoint.resume pointing at an earlier step")
            average_checkpoints(files, out)
            summary = {"model": str(out), "averaged_epochs": [f.name for f in files],
                       "steps": self.state.step, "steps_per_epoch": self.steps_per_epoch,
                       "samples": self.state.samples, "seconds": round(time.time() - started, 1),
                       "skipped_samples": self.loader.skipped}
            (Path(self.cfg.out_dir) / "finetune.json").write_text(json.dumps(summary, indent=1) + "\n")

        on_main_rank(self.ctx.is_main, average)
        return out
