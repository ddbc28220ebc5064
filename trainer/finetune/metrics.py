"""What a fine-tuning log record holds: means since the last record, averaged over ranks.

  loss, loss/audio_visual, loss/audio, loss/visual (the steps that trained that head), train/acc
  (the argmax class has target mass), lr, grad_norm, perf/samples_per_s, perf/step_s,
  data/skipped (bad samples skipped so far, all ranks).
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .heads import MODES


class StepMeter:
    def __init__(self, ctx, loader, batch_size: int) -> None:
        self.ctx, self.loader, self.batch_size = ctx, loader, batch_size
        self._reset()

    def _reset(self) -> None:
        # loss sum, acc sum, steps, then (loss sum, steps) per head
        self.sums = [0.0, 0.0, 0.0] + [0.0] * (2 * len(MODES))
        self.window_start = time.perf_counter()

    def add(self, values: dict) -> None:
        self.sums[0] += values["loss"]
        self.sums[1] += values["acc"]
        self.sums[2] += 1
        self.sums[3 + 2 * values["mode"]] += values["loss"]
        self.sums[4 + 2 * values["mode"]] += 1

    def record(self, lr: float, grad_norm) -> dict:
        """A collective: every rank calls it at the same step."""
        elapsed = time.perf_counter() - self.window_start
        stats = torch.tensor(self.sums + [float(self.loader.skipped)], dtype=torch.float64,
                             device=self.ctx.device)
        world = self.ctx.world_size
        if world > 1:
            dist.all_reduce(stats)
        s = stats.tolist()
        steps = max(s[2], 1.0)
        out = {"loss": s[0] / steps, "train/acc": s[1] / steps, "lr": lr,
               "grad_norm": float(grad_norm) if grad_norm is not None else None}
        for i, mode in enumerate(MODES):
            if s[4 + 2 * i] > 0:
                out[f"loss/{mode}"] = s[3 + 2 * i] / s[4 + 2 * i]
        local_steps = s[2] / world
        out["perf/samples_per_s"] = local_steps * self.batch_size * world / elapsed
        out["perf/step_s"] = elapsed / max(local_steps, 1.0)
        out["data/skipped"] = int(s[-1])
        self._reset()
        return out
