"""The loader's position: a few integers, the same on every rank, JSON-serialisable.

(seed, epoch, batches consumed in the epoch) determine the rest: batch j of a rank comes from lane
j % lanes as that lane's batch j // lanes, and a lane's batch k is made of its stream positions
[k*B, (k+1)*B). Because the position does not depend on the rank, rank 0's state (e.g. in DeepSpeed's
client_state) restores every rank. The other fields only guard against resuming with a loader made
differently; `skipped` carries the bad-sample counts on into the trainer's logs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

STATE_VERSION = 1
_MUST_MATCH = ("seed", "lanes", "batch_size", "world_size", "mode", "epoch_batches")


@dataclass
class LoaderState:
    seed: int
    lanes: int
    batch_size: int
    world_size: int
    mode: str
    epoch_batches: int
    epoch: int = 0
    batches: int = 0            # consumed in `epoch` by this rank (= by every rank)
    skipped: dict = field(default_factory=dict)
    version: int = STATE_VERSION

    def advance(self) -> None:
        """One batch handed out; an epoch ends after `epoch_batches`."""
        self.batches += 1
        if self.batches >= self.epoch_batches:
            self.epoch, self.batches = self.epoch + 1, 0

    def to_dict(self) -> dict:
        return asdict(self)

    def restore(self, saved: dict) -> None:
        """Take epoch, batches and counts from a saved state made by an equal loader."""
        if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
            raise ValueError(f"not a shards loader state (version {STATE_VERSION}): {saved!r:.200}")
        wrong = {k: (saved.get(k), getattr(self, k)) for k in _MUST_MATCH if saved.get(k) != getattr(self, k)}
        if wrong:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in wrong.items())
            raise ValueError(f"the saved loader state belongs to a different loader ({detail}); make "
                             "the loader with the same urls, batch_size, world_size, seed and lanes "
                             "(lanes, not num_workers, fixes the stream)")
        epoch, batches = int(saved["epoch"]), int(saved["batches"])
        if epoch < 0 or not 0 <= batches < self.epoch_batches:
            raise ValueError(f"saved position epoch={epoch} batches={batches} is outside an epoch "
                             f"of {self.epoch_batches} batches")
        self.epoch, self.batches = epoch, batches
        self.skipped = {str(k): int(v) for k, v in (saved.get("skipped") or {}).items()}
