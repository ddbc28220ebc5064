"""Progress of a sharding or synth run: a tqdm bar on a terminal, plain timed lines anywhere else.

A bar redrawn with carriage returns is unreadable in a SLURM log file or a pipe, so off a terminal
`clip_progress` returns `PlainProgress`, which has the bar's few methods the runs use and prints
one line ("shard train task 0/2: 120/400 clips (30%), 3.1 clips/s, ok=118 failed=2") at most every
`every_s` seconds and once at the end.
"""
from __future__ import annotations

import sys
import time


def clip_progress(total: int, *, desc: str, enabled: bool = True, initial: int = 0,
                  stream=None, every_s: float = 30.0):
    """A tqdm bar when `stream` (stderr) is a terminal, else PlainProgress; silent if not enabled."""
    stream = stream or sys.stderr
    if enabled and _is_terminal(stream):
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="clip", dynamic_ncols=True,
                    smoothing=0.05, file=stream)
    return PlainProgress(total, desc=desc, enabled=enabled, initial=initial, stream=stream,
                         every_s=every_s)


class PlainProgress:
    def __init__(self, total: int, *, desc: str, enabled: bool, initial: int, stream,
                 every_s: float) -> None:
        self.total, self.n, self.desc = total, initial, desc
        self.enabled, self.stream, self.every_s = enabled, stream, every_s
        self._initial, self._postfix = initial, ""
        self._started = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._print()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self._postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def refresh(self) -> None:
        pass

    def write(self, text: str, file=None) -> None:
        print(text, file=file or self.stream, flush=True)

    def close(self) -> None:
        if self.n > self._initial or self.total == 0:
            self._print()

    def line(self) -> str:
        done = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._initial) / max(time.monotonic() - self._started, 1e-9)
        tail = f", {self._postfix}" if self._postfix else ""
        return f"{self.desc}: {self.n}/{self.total} clips{done}, {rate:.1f} clips/s{tail}"

    def _print(self) -> None:
        self._last = time.monotonic()
        if self.enabled:
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
