"""Shard-level stages: which shards a lane reads, in which order, epoch by epoch.

Every random draw comes from a generator seeded by integers only (`rng_for(seed, epoch, ...)`), so any
process can rebuild any lane's stream from scratch; that is what exact resume replays.

Without replacement (default): the shard list is shuffled with (seed, epoch), identically on every
rank, then split by rank (`shards[rank::world]`) and by lane (`[lane::lanes]`). A lane that runs out
before the epoch's fixed batch count continues ("wraps") into further passes over the whole shard list,
each reshuffled with (seed, epoch, rank, lane, pass), so uneven shard sizes never shorten an epoch.
With replacement (`resampled=True`, and always when mixing datasets): each lane draws shards uniformly
with (seed, epoch, rank, lane, dataset). Evaluation reads its split once, in order, no shuffle.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .sources import DatasetSource, ShardRef

# Put after each pass over a lane's shards: the shuffle buffer empties there, so an epoch hands out
# every sample of the lane's own split before any sample of a wrapped pass.
END_OF_PASS = "end-of-pass"

# Stream tags: the first integers after (seed, epoch) that keep the draws of each use apart.
(TAG_SHARDS, TAG_PASS, TAG_RESAMPLE, TAG_MIX, TAG_BALANCE, TAG_SHUFFLE, TAG_SAMPLE, TAG_BATCH,
 TAG_FRAMES) = range(1, 10)


def rng_for(*ints: int) -> np.random.Generator:
    """A generator determined by integers only (numpy SeedSequence entropy)."""
    return np.random.default_rng([int(i) for i in ints])


def epoch_order(shards: Sequence[ShardRef], seed: int, epoch: int) -> list[ShardRef]:
    """The epoch's shard order, identical on every rank."""
    perm = rng_for(seed, epoch, TAG_SHARDS).permutation(len(shards))
    return [shards[i] for i in perm]


def split(shards: Sequence[ShardRef], rank: int, world_size: int, lane: int, lanes: int):
    """split_by_node then split_by_lane (lanes are DataLoader workers' streams)."""
    return list(shards[rank::world_size][lane::lanes])


def check_enough_shards(dataset: DatasetSource, world_size: int, lanes: int) -> None:
    """Without replacement every (rank, lane) needs at least one shard."""
    n, need = len(dataset.shards), world_size * lanes
    if n < need:
        raise ValueError(
            f"{n} shards cannot feed world_size x lanes = {world_size} x {lanes} = {need} streams "
            "without replacement: write more, smaller shards (avsiam shard --samples-per-shard), use "
            "fewer workers (lanes; data.num_workers in a run config), or set the loader option "
            "resampled=True (data.options.resampled=true)")


def lane_shards(dataset: DatasetSource, *, seed: int, epoch: int, rank: int, world_size: int,
                lane: int, lanes: int) -> Iterator[ShardRef]:
    """Pass 0: the lane's own split of the epoch order; then whole-list passes, reshuffled (endless).

    END_OF_PASS follows each pass."""
    yield from split(epoch_order(dataset.shards, seed, epoch), rank, world_size, lane, lanes)
    yield END_OF_PASS
    for pass_index in range(1, 1 << 62):
        perm = rng_for(seed, epoch, TAG_PASS, rank, lane, pass_index).permutation(len(dataset.shards))
        yield from (dataset.shards[i] for i in perm)
        yield END_OF_PASS


def resampled_shards(dataset: DatasetSource, *, seed: int, epoch: int, rank: int, lane: int,
                     index: int) -> Iterator[ShardRef]:
    """Shards drawn uniformly with replacement (endless)."""
    rng = rng_for(seed, epoch, TAG_RESAMPLE, rank, lane, index)
    n = len(dataset.shards)
    while True:
        yield dataset.shards[int(rng.integers(n))]


def eval_shards(dataset: DatasetSource, *, rank: int, world_size: int, lane: int,
                lanes: int) -> list[ShardRef]:
    """The lane's split in the shards' own order, read once."""
    return split(dataset.shards, rank, world_size, lane, lanes)


def mix_streams(streams: list[Iterator[dict]], weights: Sequence[float],
                rng: np.random.Generator) -> Iterator[dict]:
    """Each next sample comes from stream i with probability weights[i] / sum(weights)."""
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()
    cum = np.cumsum(p)
    while True:
        i = min(int(np.searchsorted(cum, rng.random(), side="right")), len(streams) - 1)
        yield next(streams[i])
