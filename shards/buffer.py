"""The sample shuffle buffer: bounded, undecoded, replayable.

It holds raw samples (bytes, before any decoding) and never more than `size` samples nor more than
`max_bytes` bytes (a single sample larger than `max_bytes` passes alone). When a new sample would
break either bound, random samples leave first; at the end of the stream the rest leave in random
order, and so do they at a {"__flush__"} marker (the end of a pass over the lane's shards), which
is not passed on. The random indices come from a generator seeded by integers, so replaying the same input
replays the same output: resume runs this stage again over raw bytes (cheap) instead of decoding.

Memory per rank is at most lanes x max_bytes for the buffers plus
num_workers x prefetch_factor decoded batches in flight (DataLoader's bound).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


class ShuffleBuffer:
    """Stage: shuffle raw samples within a bounded buffer (`size` 0 passes samples through)."""

    def __init__(self, size: int, max_bytes: int, rng: np.random.Generator):
        if size < 0 or max_bytes <= 0:
            raise ValueError(f"shuffle buffer bounds must be size >= 0, max_bytes > 0 ({size}, {max_bytes})")
        self.size = size
        self.max_bytes = max_bytes
        self.rng = rng
        self.peak_items = 0
        self.peak_bytes = 0

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        if self.size == 0:
            yield from (s for s in samples if "__flush__" not in s)
            return
        buf: list[dict] = []
        held = 0
        for sample in samples:
            if "__flush__" in sample:       # end of a pass: empty the buffer first
                while buf:
                    yield self._take(buf)
                held = 0
                continue
            nbytes = sample.get("__nbytes__", 0)
            while buf and (len(buf) + 1 > self.size or held + nbytes > self.max_bytes):
                out = self._take(buf)
                held -= out.get("__nbytes__", 0)
                yield out
            buf.append(sample)
            held += nbytes
            self.peak_items = max(self.peak_items, len(buf))
            self.peak_bytes = max(self.peak_bytes, held)
        while buf:
            yield self._take(buf)

    def _take(self, buf: list[dict]) -> dict:
        k = int(self.rng.integers(len(buf)))
        buf[k], buf[-1] = buf[-1], buf[k]
        return buf.pop()
