"""Derive the DeepSpeed JSON config from a run config; the one engine factory and dtype helper.

Choices made here, once:
- DeepSpeed's own gradient accumulation is always 1. A step's backward passes (gradient-caching
  chunks, reconstruction chunks, accumulation micro-batches) all run inside one
  `engine.coalesce_grad_reduction()` block, so ZeRO reduces gradients once per optimizer step.
- The optimizer is DeepSpeed's Adam (FusedAdam on CUDA, torch's Adam with `torch_adam` on CPU);
  `adam_w_mode` is set explicitly because DeepSpeed's "Adam" type defaults to AdamW. With
  `objective.schedule=official` it is `phased_adam.PhasedAdam` (two Adam states), passed as the
  client optimizer.
- The learning rate follows `schedule.lr_at(step)` and is set by the trainer each step, so it is
  exact on resume and needs no DeepSpeed scheduler state.
"""
from __future__ import annotations

from typing import Any

import torch

from .config import RunConfig
from .module import param_groups
from .phased_adam import build_phased_adam, check_resume


def derive_deepspeed_config(cfg: RunConfig, world_size: int, device_type: str,
                            load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict for `cfg` on `world_size` ranks of `device_type` ('cpu'|'cuda')."""
    ds = cfg.deepspeed
    micro = cfg.data.batch_size * cfg.gradient_accumulation
    on_cuda = device_type == "cuda"
    if ds.precision == "fp16" and not on_cuda:
        raise ValueError("deepspeed.precision=fp16 needs CUDA; use fp32 (or bf16) on CPU")
    overlap = on_cuda if ds.overlap_comm is None else ds.overlap_comm
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": overlap,
        "contiguous_gradients": True,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.zero_stage < 3:
        zero["allgather_bucket_size"] = ds.allgather_bucket_size
    else:
        zero["stage3_prefetch_bucket_size"] = ds.allgather_bucket_size
    config: dict[str, Any] = {
        # One "micro-batch" for DeepSpeed = everything a rank processes in one optimizer step.
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "optimizer": {
            "type": "Adam",
            "params": {
                "lr": cfg.optim.lr,
                "betas": list(cfg.optim.betas),
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
                "adam_w_mode": cfg.optim.name == "adamw",
                "torch_adam": not on_cuda,
            },
        },
        "zero_optimization": zero,
        "gradient_clipping": cfg.optim.grad_clip,
        "steps_per_print": 10 ** 12,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": False,
    }
    if cfg.two_adam_states:
        # The client optimizer (phased_adam.PhasedAdam, built by create_engine) keeps two Adam states.
        del config["optimizer"]
        config["zero_allow_untested_optimizer"] = True
    if ds.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif ds.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                          "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    return _merge(config, ds.extra)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def create_engine(module, cfg: RunConfig, world_size: int, device_type: str, load_universal: bool = False,
                  lr_scales: dict[str, float] | None = None):
    """Wrap `module` (a PretrainModule or FinetuneModule) in a DeepSpeed engine with the derived
    config and `module.param_groups`; returns (engine, [(group name, lr scale)] in optimizer order)."""
    import deepspeed     # here: after init_distributed chose DeepSpeed's accelerator

    groups = param_groups(module, cfg.optim.weight_decay, lr_scales)
    plain = [{k: v for k, v in g.items() if k not in ("name", "lr_scale")} for g in groups]
    optimizer = None
    if cfg.two_adam_states:
        check_resume(cfg.objective.schedule, load_universal)
        optimizer = build_phased_adam(plain, cfg.optim)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=None if optimizer else plain, optimizer=optimizer,
        config=derive_deepspeed_config(cfg, world_size, device_type, load_universal))
    engine.train()
    return engine, [(g["name"], g["lr_scale"]) for g in groups]


def engine_dtype(engine) -> torch.dtype:
    """The dtype the engine's model computes in (inputs are cast to it)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32
