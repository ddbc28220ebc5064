"""The loop's metrics meter: every `log_every` steps one record of means since the last record.

A record (JSONL / TensorBoard; averaged over ranks) holds the run kind's step values under their
record names (pretraining: loss, loss/contrastive, loss/reconstruction, loss/rec_audio,
loss/rec_visual, contrastive/acc; fine-tuning: loss, train/acc, loss/<head> over the steps that
trained that head), and for every run: lr, grad_norm, perf/samples_per_s (all ranks),
perf/data_wait (fraction of step time spent waiting for the loader), perf/mfu (model FLOPs / step
time / device peak; absent when the FLOPs or the peak are unknown, e.g. on CPU without
peak_tflops), perf/step_s, mem/peak_gib (max over ranks: CUDA peak allocated, or peak RSS on CPU),
data/skipped (bad samples skipped so far, all ranks).
"""
from __future__ import annotations

import resource
import time
from typing import Mapping

import torch
import torch.distributed as dist

from .distributed import DistContext
from .flops import mfu, peak_flops


class StepMeter:
    def __init__(self, ctx: DistContext, loader, names: Mapping[str, str], *, samples_per_step: int,
                 flops_per_sample: float | None = None, peak_tflops: float | None = None,
                 precision: str = "fp32") -> None:
        self.ctx, self.loader, self.names = ctx, loader, dict(names)
        self.samples_per_step = samples_per_step
        self.flops_per_sample = flops_per_sample
        self.peak = _peak(ctx, peak_tflops, precision)
        if ctx.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        self._reset()

    def _reset(self) -> None:
        self.sums = dict.fromkeys(self.names, 0.0)
        self.counts = dict.fromkeys(self.names, 0)
        self.steps, self.wait = 0, 0.0
        self.window_start = time.perf_counter()

    def start_step(self) -> None:
        self._t0 = time.perf_counter()

    def data_ready(self) -> None:
        self.wait += time.perf_counter() - self._t0

    def add(self, values: Mapping[str, float]) -> None:
        """One step's values (keys of `names`; a key may be absent from a step)."""
        for key, value in values.items():
            if key in self.sums:
                self.sums[key] += float(value)
                self.counts[key] += 1
        self.steps += 1

    def record(self, lr: float, grad_norm) -> dict:
        """Means since the last record, reduced over ranks (a collective: every rank calls it)."""
        if self.ctx.device_type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        elapsed = time.perf_counter() - self.window_start
        keys = list(self.names)
        stats = torch.tensor([self.sums[k] for k in keys] + [float(self.counts[k]) for k in keys]
                             + [self.wait / elapsed, float(self.loader.skipped)],
                             dtype=torch.float64, device=self.ctx.device)
        peak = torch.tensor([_peak_memory_gib(self.ctx)], dtype=torch.float64, device=self.ctx.device)
        world = self.ctx.world_size
        if world > 1:
            dist.all_reduce(stats)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        stats = stats.tolist()
        n = len(keys)
        record = {self.names[k]: stats[i] / stats[n + i] for i, k in enumerate(keys) if stats[n + i] > 0}
        samples_per_s = self.steps * self.samples_per_step * world / elapsed
        record.update({
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "perf/samples_per_s": samples_per_s,
            "perf/step_s": elapsed / max(self.steps, 1),
            "perf/data_wait": stats[2 * n] / world,
            "mem/peak_gib": float(peak.item()),
            "data/skipped": int(stats[2 * n + 1]),
        })
        if self.flops_per_sample is not None:
            value = mfu(self.flops_per_sample, samples_per_s / world, self.peak)
            if value is not None:
                record["perf/mfu"] = value
        self._reset()
        return record


def _peak(ctx: DistContext, peak_tflops: float | None, precision: str) -> float | None:
    if peak_tflops:
        return peak_tflops * 1e12
    if ctx.device_type == "cuda":
        return peak_flops(torch.cuda.get_device_name(ctx.device), precision)
    return None


def _peak_memory_gib(ctx: DistContext) -> float:
    if ctx.device_type == "cuda":
        return torch.cuda.max_memory_allocated(ctx.device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux
