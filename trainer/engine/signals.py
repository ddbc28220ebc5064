"""Stop requests (SIGTERM, SIGUSR1, a stop-request file) turned into one collective decision at a
step boundary, and the time-based checkpoint cadence decided in the same collective.

- `install_early_handlers()` runs first thing in every rank (cluster/cli.py, before torch is
  imported): a signal that arrives while the rank is still starting is recorded, not lost, and
  `StopRequest` picks it up when the loop begins.
- A handler only records the signal. At each step boundary every rank calls `should_stop()`,
  which all-reduces (max) the local flag: a signal or request that reached any rank stops all of
  them after the same step, so they checkpoint together and exit cleanly.
- `RUN/stop-request` (written by the SLURM batch shell when it gets the warning or TERM, or by a
  user: `touch RUN/stop-request`) is checked by every rank at each boundary, so a warning that
  came before the ranks could catch signals still stops them. On the decision rank 0 renames it
  to `RUN/stop-acknowledged` (created when the stop had another cause), which tells the batch
  shell to stop forwarding the signal and to requeue the job once the step has ended.
- `every_minutes` > 0: `save_now` is set after the boundary at which rank 0's clock passed that
  many minutes since the start or the last time-based save.

Importing this module must stay cheap (no torch at import time).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_FILE = "stop-request"             # as in cluster/templates/train.sbatch
ACK_FILE = "stop-acknowledged"
_REQUESTED, _FILE = 1, 2                # local codes of `request()` and of the stop-request file

_early: dict[str, int | None] = {"received": None}


def _record_early(signum: int, frame: FrameType | None) -> None:
    _early["received"] = signum


def install_early_handlers(signals: tuple[int, ...] = DEFAULT_SIGNALS) -> None:
    """Record SIGTERM/SIGUSR1 from now on (instead of dying or ignoring them) until a
    `StopRequest` takes over; call it before any heavy import."""
    for sig in signals:
        signal.signal(sig, _record_early)


def early_signal() -> int | None:
    """The signal recorded by the early handlers, if any."""
    return _early["received"]


def stop_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / STOP_FILE


class StopRequest:
    """Install handlers on enter; `should_stop()` is collective; handlers restored on exit."""

    def __init__(self, device=None, signals: tuple[int, ...] = DEFAULT_SIGNALS,
                 run_dir: str | Path | None = None, every_minutes: float = 0.0,
                 is_main: bool | None = None, clock=time.monotonic) -> None:
        self.device = device
        self.signals = signals
        self.received: int | None = None
        self.forced = False       # set by `request()` (e.g. run.stop_at_step)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every_s = max(0.0, float(every_minutes)) * 60.0
        self.is_main = (os.environ.get("RANK", "0") == "0") if is_main is None else is_main
        self.save_now = False     # set by should_stop(): the time-based checkpoint is due
        self._clock = clock
        self._since = clock()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if self.received is None and early_signal() in self.signals:
            self.received = early_signal()
            _early["received"] = None       # taken: a later loop in this process starts afresh
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._since = self._clock()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def request(self) -> None:
        """Ask for a stop at the next boundary, as a signal would."""
        self.forced = True

    def _file_requested(self) -> bool:
        return self.run_dir is not None and stop_file(self.run_dir).exists()

    @property
    def local_code(self) -> int:
        """0: nothing; 1: `request()`; 2: the stop-request file; else the signal number."""
        if self.received is not None:
            return self.received
        if self._file_requested():
            return _FILE
        return _REQUESTED if self.forced else 0

    def should_stop(self) -> str | None:
        """The stop reason on every rank when any rank got a request, else None (a collective call).
        A signal wins over the file and `request()`; the reason is the signal's name,
        "stop-request" (the file) or "requested". Rank 0 acknowledges signals and the file. Also sets
        `save_now` (the time-based checkpoint is due) from rank 0's clock, in the same collective."""
        code = self.local_code
        due = int(self.is_main and self.every_s > 0 and self._clock() - self._since >= self.every_s)
        import torch.distributed as dist
        if dist.is_initialized() and dist.get_world_size() > 1:
            import torch
            flag = torch.tensor([code, due], dtype=torch.int32, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code, due = int(flag[0].item()), int(flag[1].item())
        self.save_now = bool(due) and code == 0
        if self.save_now:
            self._since = self._clock()
        if code == 0:
            return None
        if code == _REQUESTED:
            return "requested"
        reason = STOP_FILE if code == _FILE else signal.Signals(code).name
        if self.is_main:
            self.acknowledge(reason)
        return reason

    def acknowledge(self, reason: str) -> None:
        """Rank 0: turn the stop-request file into the acknowledgement (the batch shell waits for
        it), so that it cannot also stop the next run."""
        if self.run_dir is None:
            return
        request, ack = stop_file(self.run_dir), self.run_dir / ACK_FILE
        try:
            if request.exists():
                os.replace(request, ack)
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                ack.write_text(f"{reason}\n")
        except OSError:
            pass   # a read-only or vanished run folder must not stop the save
