"""Stop requests (SIGTERM, SIGUSR1) turned into one collective decision at a step boundary.

A handler only records the signal. At each step boundary every rank calls `should_stop()`, which
all-reduces (max) the local flag: a signal that reached any rank stops all of them after the same
step, so they checkpoint together and exit cleanly (SLURM preemption sends `--signal=B:USR1@90` to
the batch shell, which forwards it to the tasks; a scheduler's SIGTERM reaches every task).
"""
from __future__ import annotations

import signal
from types import FrameType

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Install handlers on enter; `should_stop()` is collective; handlers restored on exit."""

    def __init__(self, device=None, signals: tuple[int, ...] = DEFAULT_SIGNALS) -> None:
        self.device = device
        self.signals = signals
        self.received: int | None = None
        self.forced = False       # set by `request()` (e.g. run.stop_at_step)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
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

    @property
    def local_code(self) -> int:
        """0: nothing; 1: `request()`; else the signal number."""
        return self.received if self.received is not None else (1 if self.forced else 0)

    def should_stop(self) -> str | None:
        """The stop reason on every rank when any rank got a request, else None (a collective call).
        A signal wins over `request()`; the reason is the signal's name or "requested"."""
        import torch
        import torch.distributed as dist
        code = self.local_code
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([code], dtype=torch.int32, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        if code == 0:
            return None
        return "requested" if code == 1 else signal.Signals(code).name
