"""Progress of a loop: a tqdm bar on a terminal, plain periodic lines anywhere else.

A bar redrawn with carriage returns is unreadable in a SLURM log file or a pipe, so off a terminal
each metrics record becomes one line instead ("pretrain step 120/400 (30%): loss 4.21 acc 0.65"),
which also goes to the run's train.log (see run_log.py). Rank 0 only; `enabled=False` is silent.
"""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, *, initial: int = 0, desc: str, unit: str = "step",
                 enabled: bool = True, stream=None) -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                            file=self.stream)

    @property
    def on_terminal(self) -> bool:
        return self.bar is not None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def report(self, **values: str) -> None:
        """The latest figures: the bar's postfix, or one plain line."""
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)
        elif self.enabled:
            from .run_log import log_line
            log_line(self.line(values), stream=self.stream)

    def line(self, values: dict) -> str:
        done = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        figures = " ".join(f"{k} {v}" for k, v in values.items())
        return f"{self.desc} {self.unit} {self.n}/{self.total}{done}: {figures}".rstrip(": ")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
