"""Learning rate as a pure function of the optimizer step.

Being a function of the step (not a stateful scheduler), it resumes exactly and needs nothing in
the checkpoint. Schedules (all after an optional linear warm-up from 0):
- multistep: the official AVSiam schedule, lr x gamma at each milestone (fractions of max_steps;
  the official 10/15/20 of 25 epochs = 0.4/0.6/0.8, gamma 0.5);
- cosine: cosine decay from lr to lr * min_lr_ratio at max_steps;
- constant.
"""
from __future__ import annotations

import math

from .config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based) of a `max_steps`-step run."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "multistep":
        passed = sum(1 for m in cfg.milestones if step >= round(m * max_steps))
        return cfg.lr * cfg.gamma ** passed
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
