"""One pretraining step: the multi-ratio contrastive pass and the 75% reconstruction pass.

Objective schedule (`objective.schedule`):
- `sum` (default): L = w_c * L_contrastive + w_r * L_reconstruction, one optimizer step per batch.
  One gradient reduction and one Adam update per step, and it composes with gradient caching.
- `official` (the paper presets): the official loop, a contrastive optimizer step, then a
  reconstruction optimizer step on the same batch, each with its own Adam state
  (`phased_adam.PhasedAdam`, both states in the DeepSpeed checkpoint).
- `alternate`: the same two steps sharing one Adam state.

Gradient caching (`objective.contrastive_chunk = C`): the rank's batch is embedded in chunks of C
under no_grad, the contrastive loss (gathered across ranks with gradient, rank-local rows) gives the
gradient w.r.t. the embeddings, then each chunk is re-run with gradients (same masks, same RNG state)
and back-propagates <embeddings, cached gradient>. Activation memory is that of one chunk, whatever
the contrastive batch. The reconstruction pass is chunked the same way (`reconstruction_chunk`,
default C): its loss is a mean over samples, so chunk losses weighted by size add up exactly.

All backward passes of a step run inside `engine.coalesce_grad_reduction()`: ZeRO 1/2/3 keep the
gradients local and reduce once when the block ends; `engine.step()` follows.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import torch

from shards.transforms import model_input
from trainer.masking import MultiRatioMasker, TokenMasks, random_masks

from .config import ObjectiveConfig
from .deepspeed_config import engine_dtype
from .phased_adam import phased_optimizer

METRIC_KEYS = ("loss", "loss_contrastive", "contrastive_acc", "loss_reconstruction",
               "loss_rec_audio", "loss_rec_visual")


@dataclass
class StepInputs:
    """One micro-batch on the device, with the masks its passes use."""

    audio: torch.Tensor
    visual: torch.Tensor
    contrastive_masks: TokenMasks
    reconstruction_masks: TokenMasks

    @property
    def size(self) -> int:
        return self.audio.shape[0]


@dataclass
class MaskPlan:
    """Draws a step's masks from generators seeded by (seed, rank, step, micro-batch): the masks of a
    step never depend on history, so a resumed run draws the same ones."""

    masker: MultiRatioMasker
    reconstruction_ratio: float
    audio_tokens: int
    visual_tokens: int
    seed: int
    rank: int
    group: int | None = None  # contrastive masks drawn per group of this many samples (the chunk)

    def generator(self, step: int, micro: int, purpose: str, device: torch.device) -> torch.Generator:
        text = f"{self.seed}/{self.rank}/{step}/{micro}/{purpose}".encode()
        g = torch.Generator(device=device)
        g.manual_seed(int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1)
        return g

    def draw(self, batch: int, step: int, micro: int, device: torch.device) -> tuple[TokenMasks, TokenMasks]:
        g = self.generator(step, micro, "contrastive", device)
        size = self.group or batch
        parts = [self.masker(min(size, batch - i), generator=g, device=device) for i in range(0, batch, size)]
        contrastive = TokenMasks(torch.cat([p.audio for p in parts]), torch.cat([p.visual for p in parts]))
        reconstruction = random_masks(batch, self.reconstruction_ratio, self.audio_tokens, self.visual_tokens,
                                      generator=self.generator(step, micro, "reconstruction", device),
                                      device=device)
        return contrastive, reconstruction


@dataclass
class _Totals:
    """Weighted sums of a step's metrics, kept as tensors (no device sync until `floats`)."""

    values: dict[str, object] = field(default_factory=lambda: dict.fromkeys(METRIC_KEYS, 0.0))

    def add(self, key: str, value, weight: float) -> None:
        self.values[key] = self.values[key] + value.detach().float() * weight

    def floats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.values.items()}


def _chunks(total: int, size: int | None) -> list[slice]:
    size = size or total
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


class PretrainStep:
    """Runs the passes of one optimizer step on a DeepSpeed engine wrapping a `PretrainModule`."""

    def __init__(self, engine, cfg: ObjectiveConfig) -> None:
        self.engine = engine
        self.cfg = cfg
        self.device = engine.device
        self.dtype = engine_dtype(engine)
        self.phases = phased_optimizer(engine) if cfg.schedule == "official" else None

    # ------------------------------------------------------------------ public
    def run(self, inputs: list[StepInputs], lr: float) -> dict[str, float]:
        """Backward passes + optimizer step(s) for the micro-batches of one step; returns metrics."""
        totals = _Totals()
        if self.cfg.schedule == "sum":
            self.accumulate(inputs, totals, ("contrastive", "reconstruction"))
            self._optimizer_step(lr)
        else:
            for part in ("contrastive", "reconstruction"):
                if self._weight(part) > 0:
                    if self.phases is not None:
                        self.phases.use(part)
                    self.accumulate(inputs, totals, (part,))
                    self._optimizer_step(lr)
        metrics = totals.floats()
        metrics["loss"] = (self.cfg.contrastive_weight * metrics["loss_contrastive"]
                           + self.cfg.reconstruction_weight * metrics["loss_reconstruction"])
        return metrics

    def accumulate(self, inputs: list[StepInputs], totals: _Totals | None = None,
                   parts: tuple[str, ...] = ("contrastive", "reconstruction")) -> _Totals:
        """All backward passes of `parts` for the micro-batches, with one gradient reduction."""
        totals = totals or _Totals()
        scale = 1.0 / len(inputs)
        with self.engine.coalesce_grad_reduction():
            for item in inputs:
                if "contrastive" in parts and self.cfg.uses_contrastive:
                    self._contrastive(item, scale, totals)
                if "reconstruction" in parts and self.cfg.uses_reconstruction:
                    self._reconstruction(item, scale, totals)
        return totals

    # ---------------------------------------------------------------- passes
    def _contrastive(self, item: StepInputs, scale: float, totals: _Totals) -> None:
        weight = self.cfg.contrastive_weight * scale
        chunks = _chunks(item.size, self.cfg.contrastive_chunk)
        if len(chunks) == 1:
            a, v = self.engine("contrastive", self._dev(item.audio), self._dev(item.visual), item.contrastive_masks,
                               packed=self.cfg.packed)
            loss, acc = self.engine("contrastive_loss", a, v)
            self.engine.backward(loss * weight)
        else:
            loss, acc = self._contrastive_cached(item, chunks, weight)
        totals.add("loss_contrastive", loss, scale)
        totals.add("contrastive_acc", acc, scale)

    def _contrastive_cached(self, item: StepInputs, chunks: list[slice], weight: float):
        """Gradient caching: embeddings without activations, loss, then chunk-wise re-runs."""
        rng_states, parts_a, parts_v = [], [], []
        with torch.no_grad():
            for sl in chunks:
                rng_states.append(_rng_state(self.device))
                a, v = self.engine("contrastive", self._dev(item.audio[sl]), self._dev(item.visual[sl]),
                                   item.contrastive_masks[sl], packed=self.cfg.packed)
                parts_a.append(a.float())
                parts_v.append(v.float())
        emb_a = torch.cat(parts_a).requires_grad_(True)
        emb_v = torch.cat(parts_v).requires_grad_(True)
        loss, acc = self.engine("contrastive_loss", emb_a, emb_v)
        learnable = any(p.requires_grad for p in self.engine.module.contrastive_loss.parameters())
        grad_a, grad_v = torch.autograd.grad(loss * weight, [emb_a, emb_v], retain_graph=learnable)
        for index, sl in enumerate(chunks):
            with _replayed_rng(rng_states[index], self.device):
                a, v = self.engine("contrastive", self._dev(item.audio[sl]), self._dev(item.visual[sl]),
                                   item.contrastive_masks[sl], packed=self.cfg.packed)
            surrogate = (a.float() * grad_a[sl]).sum() + (v.float() * grad_v[sl]).sum()
            if learnable and index == len(chunks) - 1:
                # The temperature's gradient: the loss graph ends at the detached embeddings.
                surrogate = surrogate + loss * weight
            self.engine.backward(surrogate)
        return loss, acc

    def _reconstruction(self, item: StepInputs, scale: float, totals: _Totals) -> None:
        chunk = self.cfg.reconstruction_chunk or self.cfg.contrastive_chunk
        for sl in _chunks(item.size, chunk):
            share = (sl.stop - sl.start) / item.size
            out = self.engine("reconstruction", self._dev(item.audio[sl]), self._dev(item.visual[sl]),
                              item.reconstruction_masks[sl], norm_pix_loss=self.cfg.norm_pix_loss)
            self.engine.backward(out["loss"] * (self.cfg.reconstruction_weight * scale * share))
            for key, name in (("loss", "loss_reconstruction"), ("loss_audio", "loss_rec_audio"),
                              ("loss_visual", "loss_rec_visual")):
                totals.add(name, out[key], scale * share)

    # --------------------------------------------------------------- helpers
    def _weight(self, part: str) -> float:
        return self.cfg.contrastive_weight if part == "contrastive" else self.cfg.reconstruction_weight

    def _optimizer_step(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()

    def to_inputs(self, batch: dict, masks: tuple[TokenMasks, TokenMasks]) -> StepInputs:
        """A loader batch for this engine. With gradient caching the inputs stay in host memory and
        each chunk moves to the device when it runs, so device memory does not grow with the batch."""
        audio, visual = batch["audio"], batch["visual"]
        if not self.cfg.contrastive_chunk:
            audio, visual = self._dev(audio), self._dev(visual)
        return StepInputs(audio, visual, masks[0].to(self.device), masks[1].to(self.device))

    def _dev(self, x: torch.Tensor) -> torch.Tensor:
        return model_input(x, self.device, self.dtype)


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replayed_rng(state, device: torch.device):
    """Run a block with the RNG state a first pass saw (drop-path/dropout replay exactly)."""
    cpu, cuda = state
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield
