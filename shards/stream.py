"""One lane's stream of batches: the loader's stages in their fixed order, built in one function.

A lane is one independent, deterministic stream of batches of a rank; DataLoader workers serve whole
lanes. Stages (see `build_lane`):

  shard-level   shards   epoch order (seed, epoch) -> split by rank -> split by lane   [shardlists]
                read     tar members -> raw samples (bytes), other members dropped    [reader]
                complete keep samples with audio and frames (by member names)
                mix      weighted choice among datasets (several datasets only)
  sample-level  balance  repeat each sample k times (balanced sampling only)          [balance]
                shuffle  bounded buffer of raw bytes                                  [buffer]
                group    B consecutive raw samples = one batch, numbered k = 0, 1, ...
                skip     drop the first k groups, undecoded (exact resume)
                decode   safe decoding of the chosen members; bad samples counted      [decode]
                fill     bad rows take a copy of a good row of the batch (eval: marked invalid)
                collate  tensors
  batch-level   mixup -> specaugment -> normalise -> noise -> roll              [augment, transforms]

Batches are formed from raw samples BEFORE decoding, so batch k of a lane always holds stream
positions [k*B, (k+1)*B): a resumed lane skips k*B raw samples without decoding them, and a bad
sample changes only its own batch. Every random draw after `group` comes from a generator seeded by
(seed, epoch, rank, lane, position) (rows) or (..., k) (batches); the draws before it replay.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .augment import apply_mixup, mixup_pairs, spec_augment
from .balance import BalanceRepeat
from .buffer import ShuffleBuffer
from .config import LoaderConfig
from .decode import (decode_fbank, decode_frame, decode_meta, frame_count, require_members)
from .errors import BadSample, SkipCounter
from .format import FBANK_SUFFIX, META_SUFFIX, frame_suffix
from .reader import describe, has_both_modalities, read_shards
from .shardlists import (TAG_BALANCE, TAG_BATCH, TAG_MIX, TAG_SAMPLE, TAG_SHUFFLE, eval_shards, lane_shards,
                         mix_streams, resampled_shards, rng_for)
from .sources import DatasetSource
from .transforms import (add_noise, choose_frames, fit_length, label_target, normalise_fbank,
                         normalise_frames, roll_time)

log = logging.getLogger("shards")


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to rebuild any lane of the rank (picklable, no open files)."""

    cfg: LoaderConfig                       # resolved
    datasets: tuple[DatasetSource, ...]
    norm: tuple[tuple[float, float], ...]   # fbank (mean, std) per dataset
    epoch_batches: int                      # batches per rank per epoch
    lane_batches: int | None = None         # eval: batches every lane yields (padded)
    balance: tuple[np.ndarray, float] | None = None  # (label weights, mean sample weight)

    @property
    def resampled(self) -> bool:
        return bool(self.cfg.resampled) or len(self.datasets) > 1


def lane_batch_count_before(batches: int, lane: int, lanes: int) -> int:
    """How many of the rank's first `batches` batches come from `lane` (batch j is lane j % lanes)."""
    return max(0, (batches - lane + lanes - 1) // lanes)


def build_lane(spec: StreamSpec, epoch: int, lane: int, skip: int) -> list[tuple[str, Callable]]:
    """The lane's stages, in order; `run_stages` chains them. `skip`: batches already consumed."""
    cfg, rank = spec.cfg, spec.cfg.rank
    counter = SkipCounter(cfg.on_error)
    rows = RowDecoder(spec, epoch, lane, counter)
    stages: list[tuple[str, Callable]] = [("samples", DatasetSamples(spec, epoch, lane))]
    if cfg.balanced:
        weights, mean = spec.balance
        stages.append(("balance", BalanceRepeat(weights, mean,
                                                rng_for(cfg.seed, epoch, TAG_BALANCE, rank, lane))))
    stages += [
        ("shuffle", ShuffleBuffer(cfg.shuffle_buffer, cfg.shuffle_buffer_bytes,
                                  rng_for(cfg.seed, epoch, TAG_SHUFFLE, rank, lane))),
        ("group", GroupBatches(cfg.batch_size, spec.lane_batches)),
        ("skip", SkipBatches(skip)),
        ("decode", rows),
        ("finish", BatchFinisher(spec, epoch, lane, counter)),
    ]
    return stages


def run_stages(stages: list[tuple[str, Callable]]) -> Iterator[dict]:
    stream: Iterable = None
    for _, stage in stages:
        stream = stage(stream)
    return iter(stream)


class DatasetSamples:
    """Source stage: shard-level stages and reading for each dataset, then their weighted mix."""

    def __init__(self, spec: StreamSpec, epoch: int, lane: int):
        self.spec, self.epoch, self.lane = spec, epoch, lane

    def __call__(self, _unused=None) -> Iterator[dict]:
        return dataset_samples(self.spec, self.epoch, self.lane)


def dataset_samples(spec: StreamSpec, epoch: int, lane: int) -> Iterator[dict]:
    cfg = spec.cfg
    streams = []
    for index, ds in enumerate(spec.datasets):
        n = len(ds.shards)
        if cfg.mode == "eval":
            shards, give_up = iter(eval_shards(ds, rank=cfg.rank, world_size=cfg.world_size,
                                               lane=lane, lanes=cfg.lanes)), None
        elif spec.resampled:
            shards, give_up = resampled_shards(ds, seed=cfg.seed, epoch=epoch, rank=cfg.rank,
                                               lane=lane, index=index), 50 * n
        else:
            shards, give_up = lane_shards(ds, seed=cfg.seed, epoch=epoch, rank=cfg.rank,
                                          world_size=cfg.world_size, lane=lane,
                                          lanes=cfg.lanes), 2 * n + 1
        streams.append(keep_complete(read_shards(shards, give_up)))
    if len(streams) == 1:
        return streams[0]
    return mix_streams(streams, [ds.weight for ds in spec.datasets],
                       rng_for(cfg.seed, epoch, TAG_MIX, cfg.rank, lane))


def keep_complete(samples: Iterable[dict]) -> Iterator[dict]:
    """Stage: samples with both modalities (and error items, counted later, and flush markers)."""
    for sample in samples:
        if "__error__" in sample or "__flush__" in sample or has_both_modalities(sample):
            yield sample


class GroupBatches:
    """Stage: (k, [(position, raw sample)] * B); eval pads with (None, None) to `total` batches."""

    def __init__(self, batch_size: int, total: int | None):
        self.batch_size = batch_size
        self.total = total

    def __call__(self, samples: Iterable[dict]) -> Iterator[tuple[int, list]]:
        samples = iter(samples)
        k, group, position = 0, [], 0
        for sample in samples:
            group.append((position, sample))
            position += 1
            if len(group) == self.batch_size:
                yield k, group
                k, group = k + 1, []
                if self.total is not None and k == self.total:
                    if next(samples, None) is not None:
                        log.warning("shards: a lane holds more samples than the records count; "
                                    "the rest are not evaluated (rewrite the shards' records)")
                    return
        if self.total is None:
            raise RuntimeError("a training stream ended; this is a bug in shards.shardlists")
        while k < self.total:
            group += [(None, None)] * (self.batch_size - len(group))
            yield k, group
            k, group = k + 1, []


class SkipBatches:
    """Stage: drop the first `count` groups of raw samples (nothing decoded)."""

    def __init__(self, count: int):
        self.count = count

    def __call__(self, groups):
        for k, group in groups:
            if k >= self.count:
                yield k, group


class RowDecoder:
    """Stage: decode each raw sample of a group into a row (None for bad samples and padding)."""

    def __init__(self, spec: StreamSpec, epoch: int, lane: int, counter: SkipCounter):
        self.spec, self.cfg, self.counter = spec, spec.cfg, counter
        self.seed = (spec.cfg.seed, epoch, TAG_SAMPLE, spec.cfg.rank, lane)

    def __call__(self, groups):
        for k, group in groups:
            rngs = [rng_for(*self.seed, p) if p is not None else None for p, _ in group]
            rows = [self.row(raw, rng) for (_, raw), rng in zip(group, rngs)]
            yield k, rows, rngs

    def row(self, raw: dict | None, rng) -> dict | None:
        if raw is None:
            return None
        try:
            if "__error__" in raw:
                raise BadSample(raw["__error__"], raw["__message__"])
            return self.decode(raw, rng)
        except BadSample as e:
            self.counter.record(e, describe(raw))
            return None

    def decode(self, raw: dict, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        require_members(raw)
        stored = frame_count(raw)
        if cfg.frames == "all" and stored != cfg.num_frames:
            raise BadSample("bad_shape", f"{stored} frames stored, {cfg.num_frames} expected")
        if isinstance(cfg.frames, int) and cfg.frames >= stored:
            raise BadSample("missing_member", f"frame {cfg.frames} of {stored} stored")
        chosen = choose_frames(stored, cfg.frames, rng)
        meta = decode_meta(raw[META_SUFFIX])
        labels = meta.get("label_indices") or []
        if cfg.num_classes is not None and any(not 0 <= i < cfg.num_classes for i in labels):
            raise BadSample("bad_label", f"label_indices {labels} outside num_classes={cfg.num_classes}")
        audio, valid = fit_length(decode_fbank(raw[FBANK_SUFFIX]), cfg.audio_frames)
        frames = torch.stack([decode_frame(raw[frame_suffix(i)], cfg.image_size) for i in chosen])
        return {"key": raw["__key__"], "audio": audio, "valid": valid, "frames": frames,
                "labels": label_target(labels, cfg.num_classes, cfg.label_type, cfg.label_smoothing),
                "source": raw["__source__"]}


class BatchFinisher:
    """Stages fill -> collate -> mixup -> specaugment -> normalise -> noise -> roll, per batch."""

    def __init__(self, spec: StreamSpec, epoch: int, lane: int, counter: SkipCounter):
        self.spec, self.cfg, self.counter, self.lane = spec, spec.cfg, counter, lane
        self.batch_seed = (spec.cfg.seed, epoch, TAG_BATCH, spec.cfg.rank, lane)
        self.mean = torch.tensor([m for m, _ in spec.norm], dtype=torch.float32)
        self.std = torch.tensor([s for _, s in spec.norm], dtype=torch.float32)

    def __call__(self, groups):
        for k, rows, rngs in groups:
            yield self.finish(k, rows, rngs)

    def finish(self, k: int, rows: list, rngs: list) -> dict:
        cfg = self.cfg
        valid = [r is not None for r in rows]
        if cfg.mode != "eval":
            rows = fill_bad(rows)
        batch = collate(rows, cfg)
        batch["valid"] = torch.tensor(valid)
        live = [r if r is not None else np.random.default_rng(0) for r in rngs]
        if cfg.mixup > 0:
            pairs = mixup_pairs(len(rows), cfg.mixup, cfg.mixup_alpha, rng_for(*self.batch_seed, k))
            apply_mixup(batch, pairs)
        if cfg.freqm or cfg.timem:
            spec_augment(batch["audio"], cfg.freqm, cfg.timem, live)
        normalise_fbank(batch["audio"], batch["audio_valid"], self.mean[batch["source"]],
                        self.std[batch["source"]], cfg.norm_order)
        if cfg.noise:
            add_noise(batch["audio"], live)
        if cfg.roll:
            roll_time(batch["audio"], live)
        if cfg.mode == "eval":
            batch["audio"][~batch["valid"]] = 0.0
            batch["visual"][~batch["valid"]] = 0.0
        batch.update(skipped=self.counter.take_delta(), lane=self.lane, lane_batch=k)
        return batch


def fill_bad(rows: list) -> list:
    """Training: each bad row takes a copy of the next good row of its batch (cyclically)."""
    good = [i for i, r in enumerate(rows) if r is not None]
    if not good:
        raise RuntimeError(f"all {len(rows)} samples of a batch are unusable (see the warnings "
                           "above for the shards); check them with `avsiam verify`")
    if len(good) == len(rows):
        return rows
    out = list(rows)
    for i, row in enumerate(rows):
        if row is None:
            out[i] = rows[next((g for g in good if g > i), good[0])]
    return out


def collate(rows: list, cfg: LoaderConfig) -> dict:
    """Rows (None = padding) -> batch tensors; frames normalised to float."""
    n_frames = cfg.num_frames if cfg.frames == "all" else 1
    blank_frames = torch.zeros(n_frames, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    blank_audio = torch.zeros(cfg.audio_frames, 128)
    blank_label = label_target([], cfg.num_classes, cfg.label_type, 0.0)
    if isinstance(blank_label, torch.Tensor):
        blank_label = torch.zeros_like(blank_label)
    visual = normalise_frames(torch.stack([r["frames"] if r else blank_frames for r in rows]))
    labels = [r["labels"] if r else blank_label for r in rows]
    if cfg.num_classes is not None:
        labels = torch.stack(labels) if cfg.label_type == "multi_hot" \
            else torch.tensor(labels, dtype=torch.long)
    return {
        "audio": torch.stack([r["audio"] if r else blank_audio for r in rows]),
        "audio_valid": torch.tensor([r["valid"] if r else 0 for r in rows], dtype=torch.long),
        "visual": visual if cfg.frames == "all" else visual[:, 0],
        "labels": labels,
        "keys": [r["key"] if r else "" for r in rows],
        "source": torch.tensor([r["source"] if r else 0 for r in rows], dtype=torch.long),
    }
