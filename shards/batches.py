"""Stage `finish`: rows -> a batch: count bad rows -> fill -> collate -> mixup -> SpecAugment ->
normalise -> noise -> roll (the CAV-MAE order, see transforms.py). Without mixup, the only
transform that mixes rows, every step after `fill` runs row by row inside `collate`; eval padding
and bad eval rows stay all zeros.

Batch fields: audio [B, F, 128], visual [B, 3, S, S] (or [B, N, 3, S, S]), both float32 (or
`output_dtype`: computed in float32, handed over in bfloat16/float16, half the bytes; with
`raw_frames` visual is uint8, normalised later by `transforms.model_input`), labels,
keys, valid [B] bool (False: the row is a stand-in for a bad sample, or eval padding), audio_valid
[B] (real fbank rows before padding), source [B] (dataset index), skipped {reason: count} for this
batch, lane, lane_batch; mix_lambda / mix_partner [B] with mixup.
"""
from __future__ import annotations

import numpy as np
import torch

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
        alloc = writer.empty if writer else _plain_empty
        live = [r if r is not None else np.random.default_rng(0) for r in rngs] \
            if cfg.per_sample_draws else None
        row_wise = cfg.mixup == 0           # no transform mixes rows: finish each row in cache
        batch = collate(rows, cfg, alloc, self._row_finisher(live) if row_wise else None)
        batch["valid"] = valid
        if not row_wise:
            pairs = mixup_pairs(len(rows), cfg.mixup, cfg.mixup_alpha, rng_for(*self.batch_seed, k))
            apply_mixup(batch, pairs)
            self._finish_audio(batch["audio"], batch["audio_valid"], batch["source"], live)
        if not row_wise and cfg.output_dtype != "float32":
            dtype = getattr(torch, cfg.output_dtype)
            for name in ("audio",) if cfg.raw_frames else ("audio", "visual"):
                batch[name] = alloc(name, batch[name].shape, dtype).copy_(batch[name])
        batch.update(skipped=self.counter.take_delta(), lane=self.lane, lane_batch=k)
        return writer.seal(batch) if writer else batch

    def _finish_audio(self, audio: torch.Tensor, valid: torch.Tensor, source: torch.Tensor,
                      live: list | None) -> None:
        """SpecAugment -> normalise -> noise -> roll on float32 rows [n, F, 128] in place."""
        cfg = self.cfg
        if cfg.freqm or cfg.timem:
            spec_augment(audio, cfg.freqm, cfg.timem, live)
        normalise_fbank(audio, valid, self.mean[source], self.std[source], cfg.norm_order)
        if cfg.noise:
            add_noise(audio, live)
        if cfg.roll:
            roll_time(audio, live)

    def _row_finisher(self, live: list | None):
        """finish(i, row [F, 128] float32, valid [1], source [1]): row i's audio transforms."""
        def finish(i: int, row: torch.Tensor, valid: torch.Tensor, source: torch.Tensor) -> None:
            self._finish_audio(row.unsqueeze(0), valid, source, live[i:i + 1] if live else None)
        return finish


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


def collate(rows: list, cfg: LoaderConfig, alloc=None, finish_row=None) -> dict:
    """Rows (None = padding) -> batch tensors: fbank cut/zero-padded, frames normalised.

    With `finish_row(i, audio_row, valid, source)` (no transform mixes rows) each row's audio is
    finished and both modalities are converted to the output dtype while the row's ~0.5 MB are in
    cache, instead of whole-batch passes over tens of MB: the same arithmetic element by element,
    so identical values, with several times less memory traffic. Without it the audio stays the raw
    float32 fbank for the whole-batch transforms of `BatchFinisher.finish`.

    `alloc(name, shape, dtype)` gives the memory of the outputs that leave as they are made: a
    hand-over slot inside a worker (shards.handover), an ordinary tensor in-process."""
    alloc = alloc or _plain_empty
    size = len(rows)
    n_frames = cfg.num_frames if cfg.frames == "all" else 1
    frames_shape = (size, n_frames, 3, cfg.image_size, cfg.image_size)
    visual_shape = frames_shape if cfg.frames == "all" else frames_shape[:1] + frames_shape[2:]
    audio_shape = (size, cfg.audio_frames, NUM_MEL_BINS)
    out_dtype = getattr(torch, cfg.output_dtype)
    late = finish_row is None and out_dtype != torch.float32    # finish converts the batch later
    audio = torch.empty(audio_shape) if late else alloc("audio", audio_shape, out_dtype)
    visual = alloc("visual", visual_shape, torch.uint8) if cfg.raw_frames else \
        torch.empty(visual_shape) if late else alloc("visual", visual_shape, out_dtype)
    visual = visual.view(frames_shape)
    audio_work = None if audio.dtype == torch.float32 else torch.empty(audio_shape[1:])
    frame_work = None if visual.dtype in (torch.float32, torch.uint8) else \
        torch.empty(frames_shape[2:])
    valid = torch.zeros(size, dtype=torch.long)
    for i, row in enumerate(rows):
        if row is None:
            visual[i].zero_()
            audio[i].zero_()
            continue
        work = audio[i] if audio_work is None else audio_work
        valid[i] = place_fbank(work, row["fbank"])
        if finish_row is not None:
            finish_row(i, work, valid[i:i + 1], torch.tensor([row["source"]]))
        if audio_work is not None:
            audio[i].copy_(audio_work)
        for j, frame in enumerate(row["frames"]):
            if cfg.raw_frames:
                visual[i, j] = frame
            elif frame_work is None:
                normalise_frames(frame, out=visual[i, j])
            else:
                visual[i, j].copy_(normalise_frames(frame, out=frame_work))
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


def _plain_empty(name: str, shape, dtype: torch.dtype) -> torch.Tensor:
    """Output memory without a hand-over ring (in-process loading): an ordinary tensor."""
    return torch.empty(shape, dtype=dtype)
