"""What the loop reports: the progress bar, and every `log_every` steps one metrics record.

A record (JSONL / TensorBoard; means over the steps since the last record, averaged over ranks):
  loss, loss/contrastive, loss/reconstruction, loss/rec_audio, loss/rec_visual, contrastive/acc,
  lr, grad_norm, perf/samples_per_s (all ranks), perf/data_wait (fraction of step time spent
  waiting for the loader), perf/mfu (analytic model FLOPs / step time / device peak; absent when the
  peak is unknown, e.g. on CPU without run.peak_tflops), perf/step_s, mem/peak_gib (max over ranks:
  CUDA peak allocated, or peak RSS on CPU), data/skipped (bad samples skipped so far, all ranks).
"""
from __future__ import annotations

import resource
import sys
import time

import torch
import torch.distributed as dist

from .config import PretrainConfig
from .distributed import DistContext
from .flops import mfu, peak_flops, train_flops_per_sample
from .metrics import MetricsLogger
from .step import METRIC_KEYS

RECORD_NAMES = {"loss": "loss", "loss_contrastive": "loss/contrastive", "contrastive_acc": "contrastive/acc",
                "loss_reconstruction": "loss/reconstruction", "loss_rec_audio": "loss/rec_audio",
                "loss_rec_visual": "loss/rec_visual"}


class Observer:
    def __init__(self, cfg: PretrainConfig, ctx: DistContext, loader, metrics: MetricsLogger,
                 start_step: int = 0) -> None:
        from tqdm import tqdm
        self.cfg, self.ctx, self.loader, self.metrics = cfg, ctx, loader, metrics
        obj = cfg.objective
        self.flops_per_sample = train_flops_per_sample(cfg.model, obj.mask_ratios, obj.reconstruction_ratio,
                                                       obj.uses_contrastive, obj.uses_reconstruction)
        self.peak = _peak(cfg, ctx)
        self.samples_per_step = cfg.data.batch_size * cfg.deepspeed.gradient_accumulation
        self.bar = tqdm(total=cfg.max_steps, initial=start_step, desc="pretrain", unit="step",
                        disable=not (ctx.is_main and cfg.progress), dynamic_ncols=True, file=sys.stderr)
        if ctx.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        self._reset()

    def _reset(self) -> None:
        self.sums = dict.fromkeys(METRIC_KEYS, 0.0)
        self.steps, self.wait = 0, 0.0
        self.window_start = time.perf_counter()

    def start_step(self) -> None:
        self._t0 = time.perf_counter()

    def data_ready(self) -> None:
        self.wait += time.perf_counter() - self._t0

    def end_step(self, step: int, values: dict[str, float], lr: float, grad_norm) -> None:
        for key in METRIC_KEYS:
            self.sums[key] += values[key]
        self.steps += 1
        self.bar.update(1)
        if step % self.cfg.log_every == 0 or step == self.cfg.max_steps:
            record = self._record(lr, grad_norm)
            self.metrics.log(step, record)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['contrastive/acc']:.2f}",
                                 sps=f"{record['perf/samples_per_s']:.1f}", refresh=False)

    def _record(self, lr: float, grad_norm) -> dict:
        """Means since the last record, reduced over ranks (a collective: every rank calls it)."""
        if self.ctx.device_type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        elapsed = time.perf_counter() - self.window_start
        means = [self.sums[k] / self.steps for k in METRIC_KEYS]
        stats = torch.tensor(means + [self.wait / elapsed, float(self.loader.skipped)], dtype=torch.float64,
                             device=self.ctx.device)
        peak = torch.tensor([_peak_memory_gib(self.ctx)], dtype=torch.float64, device=self.ctx.device)
        world = self.ctx.world_size
        if world > 1:
            dist.all_reduce(stats)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        stats = stats.tolist()
        record = {RECORD_NAMES[k]: stats[i] / world for i, k in enumerate(METRIC_KEYS)}
        samples_per_s = self.steps * self.samples_per_step * world / elapsed
        record.update({
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "perf/samples_per_s": samples_per_s,
            "perf/step_s": elapsed / self.steps,
            "perf/data_wait": stats[len(METRIC_KEYS)] / world,
            "mem/peak_gib": float(peak.item()),
            "data/skipped": int(stats[len(METRIC_KEYS) + 1]),
        })
        value = mfu(self.flops_per_sample, samples_per_s / world, self.peak)
        if value is not None:
            record["perf/mfu"] = value
        self._reset()
        return record

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()


def _peak(cfg: PretrainConfig, ctx: DistContext) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if ctx.device_type == "cuda":
        return peak_flops(torch.cuda.get_device_name(ctx.device), cfg.deepspeed.precision)
    return None


def _peak_memory_gib(ctx: DistContext) -> float:
    if ctx.device_type == "cuda":
        return torch.cuda.max_memory_allocated(ctx.device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux
