"""Fine-tuning on the one loop (`trainer.engine.loop`): what it plugs in.

The loop gives seeding, checkpoints with auto-resume, the engine, the loader, stop requests and
metrics. Fine-tuning adds: epochs (len(loader) / gradient_accumulation steps each), the head mix
and its lr multipliers (by model part), the per-epoch fp32 weights (`epochs/epoch_NNN.safetensors`,
for the last `average_last` epochs) and their average, `model.safetensors`, written when the run
finishes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from trainer.engine.checkpoint import tag_of
from trainer.engine.distributed import on_main_rank
from trainer.engine.export import export_weights
from trainer.engine.epochs import optimizer_steps_per_epoch
from trainer.engine.loop import RunKind, RunSummary, TrainingRun, run_training
from trainer.model.shard_fit import normalization_options, read_shards_dataset
from trainer.model.file_metadata import loader_facts, marker_fields

from .averaging import average_checkpoints
from .config import FinetuneConfig
from .heads import MODES, HeadSchedule
from .module import FinetuneModule, build_finetune_model
from .step import FinetuneStep


def finetune(cfg: FinetuneConfig) -> RunSummary:
    return run_training(cfg, FinetuneKind(cfg))


def epoch_file(cfg: FinetuneConfig, epoch: int) -> Path:
    """Weights after `epoch` (1-based) epochs."""
    return cfg.epochs_dir / f"epoch_{epoch:03d}.safetensors"


class FinetuneKind(RunKind):
    name = "finetune"
    loader_mode = "finetune"
    same_world_size = True     # the per-rank loader positions must match
    metric_names = {"loss": "loss", "acc": "train/acc", **{f"loss/{m}": f"loss/{m}" for m in MODES}}

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.started = time.time()

    def build_module(self) -> FinetuneModule:
        self.model = build_finetune_model(self.cfg)
        return FinetuneModule(self.model)

    def lr_scales(self) -> dict[str, float]:
        return {"head": self.cfg.heads.head_lr_mult, "fusion": self.cfg.heads.fusion_lr_mult}

    def loader_options(self) -> dict:
        mc = self.model.config
        read_shards_dataset(mc, self.cfg.data.train, bool(self.cfg.data.options.get("allow_pipe")))  # warns
        return {"audio_frames": mc.audio_frames, "image_size": mc.image_size,
                "num_classes": self.cfg.num_classes, "require_labels": self.cfg.loss == "ce",
                **normalization_options(self.model.facts, self.cfg.data.loader_options())}

    def max_steps(self, loader) -> int:
        self.steps_per_epoch = optimizer_steps_per_epoch(len(loader), self.cfg.gradient_accumulation)
        return self.cfg.schedule.epochs * self.steps_per_epoch

    def marker(self, run: TrainingRun) -> dict:
        return {**marker_fields(self.model.config, loader_facts(run.loader)), "task": "finetune"}

    def make_step(self, run: TrainingRun):
        cfg = self.cfg
        return FinetuneStep(run.engine, HeadSchedule(cfg.heads.mix, cfg.seed), cfg.loss,
                            [scale for _, scale in run.groups]).run

    def record_extra(self, run: TrainingRun, step: int) -> dict:
        """The epoch, and the lr each part's optimizer group holds now: lr/backbone, lr/head, lr/fusion."""
        out = {"epoch": step / self.steps_per_epoch}
        for (name, _), group in zip(run.groups, run.engine.optimizer.param_groups):
            out.setdefault(f"lr/{name.split('/')[0]}", float(group["lr"]))
        return out

    # ------------------------------------------------------------ epochs
    def _averaged(self, epoch: int) -> bool:
        return epoch > self.cfg.schedule.epochs - self.cfg.average_last

    def on_start(self, run: TrainingRun) -> None:
        """A run killed between an epoch's checkpoint and its weights file resumes at that epoch
        boundary: write the file from the checkpoint now."""
        point, step = run.resumed_from, run.state.step
        if point is None or step == 0 or step % self.steps_per_epoch:
            return
        epoch = step // self.steps_per_epoch
        if self._averaged(epoch):
            target = epoch_file(self.cfg, epoch)
            on_main_rank(run.ctx.is_main, lambda: target.is_file() or
                         export_weights(point.root / tag_of(step), target))

    def after_step(self, run: TrainingRun, step: int) -> Path | None:
        """At an epoch's end: a checkpoint, and the fp32 weights of the epochs that enter the average."""
        if step % self.steps_per_epoch:
            return None
        epoch = step // self.steps_per_epoch
        folder = run.save()
        if self._averaged(epoch):
            on_main_rank(run.ctx.is_main, lambda: export_weights(folder, epoch_file(self.cfg, epoch)))
        return folder

    def finish(self, run: TrainingRun, summary: RunSummary) -> None:
        """When finished: model.safetensors = the average of the last `average_last` epoch weights (rank 0)."""
        cfg = self.cfg
        summary.epochs_done = run.state.step // self.steps_per_epoch
        if summary.stopped != "finished":
            return
        out = Path(cfg.out_dir) / "model.safetensors"

        def average() -> None:
            epochs = cfg.schedule.epochs
            files = [epoch_file(cfg, e) for e in range(epochs - cfg.average_last + 1, epochs + 1)]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"epoch weights {missing} are missing: was epochs/ deleted? "
                                        f"Re-run with checkpoint.resume pointing at an earlier step")
            average_checkpoints(files, out)
            facts = {"model": str(out), "averaged_epochs": [f.name for f in files],
                     "steps": run.state.step, "steps_per_epoch": self.steps_per_epoch,
                     "samples": run.state.samples, "seconds": round(time.time() - self.started, 1),
                     "skipped_samples": run.loader.skipped}
            (Path(cfg.out_dir) / "finetune.json").write_text(json.dumps(facts, indent=1) + "\n")

        on_main_rank(run.ctx.is_main, average)
        summary.model = str(out)
