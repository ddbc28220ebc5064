"""`PhasedAdam`: Adam with one set of moments per loss, for `objective.schedule=official`.

The official AVSiam loop takes two optimizer steps per batch, a contrastive one and then a
reconstruction one, with two Adam optimizers over the same parameters: each has its own first and
second moments and its own step count, so each loss is normalised by its own gradient scale. Here
one optimizer object holds both: `use(phase)` selects whose moments the next `step()` reads and
updates. The contrastive phase keeps torch's state names (`step`, `exp_avg`, `exp_avg_sq`); the
reconstruction phase's are prefixed `reconstruction.`. Both live in the optimizer's ordinary
per-parameter state, so DeepSpeed's ZeRO 1/2/3 partition, save and restore them like any Adam
state: the checkpoint holds both, and a resume continues both exactly.

DeepSpeed's universal checkpoints carry only `exp_avg`/`exp_avg_sq`, so a run with two states
resumes on the world size and ZeRO stage it was saved with (`check_resume`).
The update is torch's Adam (L2 weight decay, the official) or AdamW (decoupled), in fp32 on the
optimizer's fp32 partitions.
"""
from __future__ import annotations

import math

import torch

PHASES = ("contrastive", "reconstruction")


def state_keys(phase: str) -> tuple[str, str, str]:
    """(step, first moment, second moment) state names of a phase."""
    prefix = "" if phase == PHASES[0] else f"{phase}."
    return f"{prefix}step", f"{prefix}exp_avg", f"{prefix}exp_avg_sq"


class PhasedAdam(torch.optim.Optimizer):
    """Adam over `params` keeping separate moments for each of `PHASES` (see module doc)."""

    def __init__(self, params, *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.decoupled = decoupled
        self.phase = PHASES[0]

    def use(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.phase = phase

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step_key, avg_key, sq_key = state_keys(self.phase)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if avg_key not in state:
                    state[step_key] = torch.zeros((), dtype=torch.float32)
                    state[avg_key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state[sq_key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state[step_key] += 1
                step = float(state[step_key])
                if decay and self.decoupled:
                    p.mul_(1 - lr * decay)
                elif decay:
                    grad = grad.add(p, alpha=decay)
                exp_avg, exp_avg_sq = state[avg_key], state[sq_key]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad.conj(), value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step))
        return loss


def build_phased_adam(param_groups: list[dict], optim) -> PhasedAdam:
    """The optimizer of `objective.schedule=official` from the run's `OptimConfig`."""
    return PhasedAdam(param_groups, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                      weight_decay=optim.weight_decay, decoupled=optim.name == "adamw")


def phased_optimizer(engine) -> PhasedAdam:
    """The `PhasedAdam` a DeepSpeed engine was built with."""
    opt = getattr(engine, "client_optimizer", None)
    if not isinstance(opt, PhasedAdam):
        raise RuntimeError("objective.schedule=official needs the engine built with PhasedAdam")
    return opt


def check_resume(schedule: str, universal: bool) -> None:
    """Refuse a universal (world-size or ZeRO-stage changing) resume of a two-state run."""
    if schedule == "official" and universal:
        raise ValueError("objective.schedule=official keeps two Adam states, and a DeepSpeed universal "
                         "checkpoint carries one: resume on the world size and deepspeed.zero_stage the "
                         "checkpoint was saved with")
