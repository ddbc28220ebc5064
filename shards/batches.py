"""Stage `finish`: rows -> a batch: count bad rows -> fill -> collate -> mixup -> SpecAugment ->
normalise -> noise -> roll (the CAV-MAE order, see transforms.py).

Batch fields: audio [B, F, 128], visual [B, 3, S, S] (or [B, N, 3, S, S]), both float32 (or
`output_dtype`: computed in float32, handed over in bfloat16/float16, half the bytes; with
`raw_frames` visual is uint8, normalised later by `transforms.model_input`), labels,
keys, valid [B] bool (False: the row is a stand-in for a bad sample, or eval padding), audio_valid
[B] (real fbank rows before padding), source [B] (dataset index), skipped {reason: count} for this
batch, lane, lane_batch; mix_lambda / mix_partner [B] with mixup.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .augment import apply_mixup, mixup_pairs, spec_augment
from .config import LoaderConfig
from .errors import SkipCounter
from .format import NUM_MEL_BINS
from .rows import BadRow
from .shardlists import TAG_BATCH, rng_for
from .transforms import (add_noise, label_target, normalise_fbank, normalise_frames, place_fbank,
                         roll_time)


class BatchFinisher:
    """Stage: (k, rows, rngs, spare) -> batch dict."""

    def __init__(self, cfg: LoaderConfig, norm, epoch: int, lane: int, counter: SkipCounter,
                 handover: tuple | None = None):
        self.cfg, self.counter, self.lane = cfg, counter, lane
        self.handover = handover        # (HandoverRing, worker id) inside a worker with a ring
        self.batch_seed = (cfg.seed, epoch, TAG_BATCH, cfg.rank, lane)
        self.mean = torch.tensor([m for m, _ in norm], dtype=torch.float32)
        self.std = torch.tensor([s for _, s in norm], dtype=torch.float32)

    def __call__(self, groups):
        for k, rows, rngs, spare in groups:
            yield self.finish(k, rows, rngs, spare)

    def finish(self, k: int, rows: list, rngs: list, spare: dict | None) -> dict:
        cfg = self.cfg
        for row in rows:
            if isinstance(row, BadRow):
                self.counter.record(row.error, row.where)
        rows = [r if isinstance(r, dict) else None for r in rows]
        valid = torch.tensor([r is not None for r in rows])
        if cfg.mode != "eval":
            rows = fill_bad(rows, spare)
        writer = self.handover[0].acquire(self.handover[1]) if self.handover else None
        alloc = writer.empty if writer else _output_allocator()
        early = cfg.mixup == 0 and not (cfg.freqm or cfg.timem)   # nothing needs the raw fbank
        batch = collate(rows, cfg, alloc, (self.mean, self.std) if early else None)
        batch["valid"] = valid
        if cfg.per_sample_draws:
            live = [r if r is not None else np.random.default_rng(0) for r in rngs]
        if cfg.mixup > 0:
            pairs = mixup_pairs(len(rows), cfg.mixup, cfg.mixup_alpha, rng_for(*self.batch_seed, k))
            apply_mixup(batch, pairs)
        if cfg.freqm or cfg.timem:
            spec_augment(batch["audio"], cfg.freqm, cfg.timem, live)
        if not early:
            normalise_fbank(batch["audio"], batch["audio_valid"], self.mean[batch["source"]],
                            self.std[batch["source"]], cfg.norm_order)
        if cfg.noise:
            add_noise(batch["audio"], live)
        if cfg.roll:
            roll_time(batch["audio"], live)
        if cfg.mode == "eval":
            batch["audio"][~valid] = 0.0
            batch["visual"][~valid] = 0.0
        if cfg.output_dtype != "float32":
            dtype = getattr(torch, cfg.output_dtype)
            for name in ("audio",) if cfg.raw_frames else ("audio", "visual"):
                batch[name] = alloc(name, batch[name].shape, dtype).copy_(batch[name])
        batch.update(skipped=self.counter.take_delta(), lane=self.lane, lane_batch=k)
        return writer.seal(batch) if writer else batch


def fill_bad(rows: list, spare: dict | None) -> list:
    """Training: each bad row takes a copy of the next good row of its batch (cyclically), or of
    `spare` when the batch has none."""
    good = [i for i, r in enumerate(rows) if r is not None]
    if len(good) == len(rows):
        return rows
    if not good:
        return [spare] * len(rows)
    return [row if row is not None else rows[next((g for g in good if g > i), good[0])]
            for i, row in enumerate(rows)]


def collate(rows: list, cfg: LoaderConfig, alloc=None, fbank_norm=None) -> dict:
    """Rows (None = padding) -> batch tensors: raw fbank cut/zero-padded (normalised too when
    `fbank_norm` = (mean, std) per dataset is given), frames normalised.

    Each row is finished while its ~0.5 MB are in cache, instead of whole-batch passes over tens
    of MB (the same arithmetic, element by element: identical values, several times less memory
    traffic).

    `alloc(name, shape, dtype)` gives the memory of the outputs that leave as they are made (audio
    in float32, visual as uint8 with raw_frames or in float32): shared memory or a hand-over slot
    inside a worker (see `_output_allocator`, shards.handover). Other dtypes are made by `finish`."""
    alloc = alloc or _output_allocator()
    size = len(rows)
    n_frames = cfg.num_frames if cfg.frames == "all" else 1
    frames_shape = (size, n_frames, 3, cfg.image_size, cfg.image_size)
    visual_shape = frames_shape if cfg.frames == "all" else frames_shape[:1] + frames_shape[2:]
    final = cfg.output_dtype == "float32"
    audio_shape = (size, cfg.audio_frames, NUM_MEL_BINS)
    audio = alloc("audio", audio_shape, torch.float32) if final else torch.empty(audio_shape)
    if cfg.raw_frames:
        visual = alloc("visual", visual_shape, torch.uint8)
    else:
        visual = alloc("visual", visual_shape, torch.float32) if final \
            else torch.empty(visual_shape)
    visual = visual.view(frames_shape)
    valid = torch.zeros(size, dtype=torch.long)
    for i, row in enumerate(rows):
        if row is None:
            visual[i].zero_()
            audio[i].zero_()
            continue
        valid[i] = place_fbank(audio[i], row["fbank"])
        if fbank_norm is not None:
            source = row["source"]
            normalise_fbank(audio[i:i + 1], valid[i:i + 1], fbank_norm[0][source:source + 1],
                            fbank_norm[1][source:source + 1], cfg.norm_order)
        for j, frame in enumerate(row["frames"]):
            if cfg.raw_frames:
                visual[i, j] = frame
            else:
                normalise_frames(frame, out=visual[i, j])
    blank = label_target([], cfg.num_classes, cfg.label_type, 0.0)
    if isinstance(blank, torch.Tensor):
        blank = torch.zeros_like(blank)
    labels = [row["labels"] if row else blank for row in rows]
    if cfg.num_classes is not None:
        labels = torch.stack(labels) if cfg.label_type == "multi_hot" \
            else torch.tensor(labels, dtype=torch.long)
    return {
        "audio": audio,
        "audio_valid": valid,
        "visual": visual.view(visual_shape),
        "labels": labels,
        "keys": [row["key"] if row else "" for row in rows],
        "source": torch.tensor([row["source"] if row else 0 for row in rows], dtype=torch.long),
    }


def _output_allocator():
    """Outside a ring: outputs in shared memory inside a DataLoader worker (handing them to the
    main process copies nothing), ordinary memory in the main process."""
    shared = get_worker_info() is not None
    return lambda name, shape, dtype: _empty(shape, dtype, shared)


def _empty(shape, dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, allocated directly in shared memory when `shared`."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)
