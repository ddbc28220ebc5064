"""One fine-tuning step: draw the head, classify, BCE or CE against the loader's (soft) targets.

Targets are the loader's multi-hot rows, already softened by mixup and label smoothing in finetune
mode. Cross-entropy takes them as class probabilities (rows normalised to sum to 1, so a two-label
clip counts half for each); BCE takes them per class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from shards.transforms import model_input
from trainer.engine.deepspeed_config import engine_dtype

from .heads import HeadSchedule


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean BCE-with-logits over samples and classes, or mean soft-target cross-entropy."""
    logits, targets = logits.float(), targets.float()
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ: do "
                         f"num_classes and the shards' label vocabulary agree?")
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if kind == "ce":
        mass = targets.sum(dim=-1, keepdim=True)
        if bool((mass <= 0).any()):
            raise ValueError("a clip without labels cannot be trained with cross-entropy (the "
                             "fine-tuning loader skips them with require_labels); use loss=bce or "
                             "drop unlabelled clips from the shards")
        return F.cross_entropy(logits, targets / mass)
    raise ValueError(f"unknown loss {kind!r}; choose bce or ce")


class FinetuneStep:
    """Runs one optimizer step on a DeepSpeed engine wrapping a `FinetuneModule`."""

    def __init__(self, engine, heads: HeadSchedule, loss: str, lr_scales: list[float]) -> None:
        self.engine, self.heads, self.loss = engine, heads, loss
        self.device = engine.device
        self.dtype = engine_dtype(engine)
        groups = engine.optimizer.param_groups
        if len(groups) != len(lr_scales):
            raise RuntimeError(f"the optimizer has {len(groups)} parameter groups, {len(lr_scales)} "
                               f"lr scales were built; this is a bug in trainer.finetune")
        self.lr_scales = lr_scales

    def run(self, micro: list[dict], step: int, lr: float) -> dict[str, float]:
        """The micro-batches' backward passes (one gradient reduction), then the optimizer step;
        every micro-batch of a step trains the same head."""
        mode = self.heads(step)
        loss_sum, hit_sum = 0.0, 0.0
        with self.engine.coalesce_grad_reduction():
            for batch in micro:
                audio = model_input(batch["audio"], self.device, self.dtype)
                visual = model_input(batch["visual"], self.device, self.dtype)
                targets = batch["labels"].to(self.device, non_blocking=True)
                logits = self.engine("classify", **HeadSchedule.inputs(mode, audio, visual))
                loss = classification_loss(logits, targets, self.loss)
                self.engine.backward(loss / len(micro))
                with torch.no_grad():
                    hit = targets.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1) > 0
                loss_sum += float(loss.detach())
                hit_sum += float(hit.float().mean())
        for group, scale in zip(self.engine.optimizer.param_groups, self.lr_scales):
            group["lr"] = lr * scale
        self.engine.step()
        loss = loss_sum / len(micro)
        return {"loss": loss, "acc": hit_sum / len(micro), f"loss/{mode}": loss}
