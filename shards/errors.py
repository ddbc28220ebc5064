"""Bad samples: one error type, one counter, one rate-limited warning.

A loader never crashes a job on bad data. Every sample that cannot be used (corrupt bytes, wrong
shapes, missing members, an unreadable shard) is counted under a short reason and logged with a
rate-limited `logging.warning` naming the shard, the sample key and the fix. Counts travel with each
batch (`batch["skipped"]`, the delta since the previous batch of the same lane) so the main process
can sum them for the trainer's logs, whatever the number of DataLoader workers.

`on_error="raise"` turns every such event into an exception instead (tests, debugging).
"""
from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("shards")


class BadSample(ValueError):
    """A sample (or shard) that cannot be used; `reason` is a short counter name."""

    def __init__(self, reason: str, message: str | None = None):
        if message is None:             # re-created from its text (DataLoader re-raises so)
            reason, message = "error", reason
        super().__init__(message)
        self.reason = reason


class SkipCounter:
    """Counts skipped samples by reason and logs them, at most `per_window` lines per `window_s`."""

    def __init__(self, on_error: str = "skip", per_window: int = 5, window_s: float = 60.0):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.on_error = on_error
        self.per_window = per_window
        self.window_s = window_s
        self.counts: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._window_start = 0.0
        self._logged = 0
        self._suppressed = 0

    def record(self, error: BadSample, where: str) -> None:
        """Count one bad sample; re-raise when the policy says so."""
        if self.on_error == "raise":
            raise BadSample(error.reason, f"{where}: {error}") from error
        self.counts[error.reason] += 1
        self._pending[error.reason] += 1
        now = time.monotonic()
        if now - self._window_start > self.window_s:
            if self._suppressed:
                log.warning("shards: %d more bad samples were not logged (counts so far: %s)",
                            self._suppressed, dict(self.counts))
            self._window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < self.per_window:
            self._logged += 1
            log.warning("shards: skipped %s: %s [%s]; check the shard with `avsiam verify`",
                        where, error, error.reason)
        else:
            self._suppressed += 1

    def take_delta(self) -> dict[str, int]:
        """Counts recorded since the previous call (attached to the next batch)."""
        delta = dict(self._pending)
        self._pending.clear()
        return delta
