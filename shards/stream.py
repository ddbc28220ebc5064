"""One lane's stream of batches: the loader's stages in their fixed order, built in one function.

A lane is one independent, deterministic stream of batches of a rank; DataLoader workers serve whole
lanes. Stages (see `build_lane`), each a named callable taking the previous stage's stream:

  shard-level   shards   per dataset: epoch order (seed, epoch) -> split by rank ->      [shardlists]
                         split by lane -> wrapped passes (eval: its split once, in order;
                         resampled: drawn with replacement)
                read     per dataset: tar members -> raw samples (bytes); other members,    [reader]
                         frames not picked and samples past the byte budget are never read
                complete per dataset: keep samples with audio and frames (by member names)
                mix      weighted choice among datasets (one dataset: its stream)
  sample-level  balance  repeat each sample k times (balanced sampling only)          [balance]
                shuffle  bounded buffer of raw bytes                                  [buffer]
                group    B consecutive raw samples = one batch, numbered k = 0, 1, ...
                skip     drop the first k groups, undecoded (exact resume)
                decode   safe decoding of the chosen members only                      [rows, decode]
  batch-level   finish   count bad rows -> fill (copies of good rows; eval: padding) -> collate
                         -> mixup -> specaugment -> normalise -> noise -> roll         [batches]

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

from .balance import BalanceRepeat
from .batches import BatchFinisher
from .buffer import ShuffleBuffer
from .config import LoaderConfig
from .errors import SkipCounter
from .reader import MemberFilter, has_both_modalities, read_shards
from .rows import RowDecoder
from .shardlists import (TAG_BALANCE, TAG_FRAMES, TAG_MIX, TAG_SHUFFLE, eval_shards, lane_shards, mix_streams,
                         resampled_shards, rng_for)
from .sources import DatasetSource, ShardRef

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


def build_lane(spec: StreamSpec, epoch: int, lane: int, skip: int,
               handover: tuple | None = None) -> list[tuple[str, Callable]]:
    """The lane's stages, in order; `run_stages` chains them. `skip`: batches already consumed;
    `handover`: (HandoverRing, worker id) when batches leave a worker through a ring."""
    cfg, rank = spec.cfg, spec.cfg.rank
    counter = SkipCounter(cfg.on_error)
    stages: list[tuple[str, Callable]] = [
        ("shards", LaneShards(spec, epoch, lane)),
        ("read", ReadShards(spec, epoch, lane)),
        ("complete", EachDataset(keep_complete)),
        ("mix", MixDatasets([ds.weight for ds in spec.datasets],
                            rng_for(cfg.seed, epoch, TAG_MIX, rank, lane))),
    ]
    if cfg.balanced:
        weights, mean = spec.balance
        stages.append(("balance", BalanceRepeat(weights, mean,
                                                rng_for(cfg.seed, epoch, TAG_BALANCE, rank, lane))))
    stages += [
        ("shuffle", ShuffleBuffer(cfg.shuffle_buffer, cfg.shuffle_buffer_bytes,
                                  rng_for(cfg.seed, epoch, TAG_SHUFFLE, rank, lane))),
        ("group", GroupBatches(cfg.batch_size, spec.lane_batches)),
        ("skip", SkipBatches(skip)),
        ("decode", RowDecoder(cfg, epoch, lane)),
        ("finish", BatchFinisher(cfg, spec.norm, epoch, lane, counter, handover)),
    ]
    return stages


def run_stages(stages: list[tuple[str, Callable]]) -> Iterator[dict]:
    stream: Iterable = None
    for _, stage in stages:
        stream = stage(stream)
    return iter(stream)


class LaneShards:
    """Stage (source): the lane's sequence of shards of each dataset (see shardlists)."""

    def __init__(self, spec: StreamSpec, epoch: int, lane: int):
        self.spec, self.epoch, self.lane = spec, epoch, lane

    def __call__(self, _unused=None) -> list[Iterator[ShardRef]]:
        cfg, epoch, lane = self.spec.cfg, self.epoch, self.lane
        out = []
        for index, ds in enumerate(self.spec.datasets):
            if cfg.mode == "eval":
                out.append(iter(eval_shards(ds, rank=cfg.rank, world_size=cfg.world_size,
                                            lane=lane, lanes=cfg.lanes)))
            elif self.spec.resampled:
                out.append(resampled_shards(ds, seed=cfg.seed, epoch=epoch, rank=cfg.rank,
                                            lane=lane, index=index))
            else:
                out.append(lane_shards(ds, seed=cfg.seed, epoch=epoch, rank=cfg.rank,
                                       world_size=cfg.world_size, lane=lane, lanes=cfg.lanes))
        return out


class ReadShards:
    """Stage: each dataset's shards -> its raw samples (reader.read_shards). An endless shard
    sequence gives up after so many shards in a row without a usable sample (eval's ends)."""

    def __init__(self, spec: StreamSpec, epoch: int, lane: int):
        self.spec, self.epoch, self.lane = spec, epoch, lane

    def __call__(self, shard_streams: list[Iterator[ShardRef]]) -> list[Iterator[dict]]:
        cfg = self.spec.cfg
        out = []
        for index, (ds, shards) in enumerate(zip(self.spec.datasets, shard_streams)):
            n = len(ds.shards)
            give_up = None if cfg.mode == "eval" else 50 * n if self.spec.resampled else 2 * n + 1
            members = MemberFilter(frame_picker(cfg, rng_for(cfg.seed, self.epoch, TAG_FRAMES,
                                                             cfg.rank, self.lane, index)),
                                   cfg.max_sample_bytes)
            out.append(read_shards(shards, give_up, members))
        return out


class EachDataset:
    """Stage: apply a per-sample-stream stage to each dataset's stream."""

    def __init__(self, stage: Callable[[Iterable[dict]], Iterator[dict]]):
        self.stage = stage

    def __call__(self, streams: list[Iterator[dict]]) -> list[Iterator[dict]]:
        return [self.stage(stream) for stream in streams]


class MixDatasets:
    """Stage: one stream from the datasets' streams, each next sample from dataset i with
    probability weights[i] / sum(weights) (one dataset: its stream as it is)."""

    def __init__(self, weights: list[float], rng: np.random.Generator):
        self.weights, self.rng = weights, rng

    def __call__(self, streams: list[Iterator[dict]]) -> Iterator[dict]:
        if len(streams) == 1:
            return streams[0]
        return mix_streams(streams, self.weights, self.rng)


def frame_picker(cfg: LoaderConfig, rng: np.random.Generator) -> tuple | None:
    """Which frame to read, decided while reading (None: read all, decide when decoding).

    Random frames are drawn while reading, before the shuffle, from a replayed per-lane generator;
    balanced sampling keeps every frame, so each repeat of a sample draws its own when decoded;
    "middle" needs the sample's frame count and is decided when decoding."""
    if cfg.frames == "random" and not cfg.balanced:
        return ("random", rng)
    if isinstance(cfg.frames, int):
        return ("index", cfg.frames)
    return None


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
