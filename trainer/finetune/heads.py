"""Which classification head an iteration trains: audio-visual, audio-only or visual-only.

AVSiam fine-tunes all three heads with one model: each iteration draws one mode (audio-visual with
p=0.5, audio 0.25, visual 0.25 by default). The draw depends only on (seed, step), so every rank picks
the same head (no rank holds gradients the others lack) and a resumed run repeats the same sequence.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MODES = ("audio_visual", "audio", "visual")
DEFAULT_MIX = {"audio_visual": 0.5, "audio": 0.25, "visual": 0.25}


class HeadMixError(ValueError):
    """An invalid head mix; the message says how to fix it."""


def check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """Validate a head mix and normalise it to probabilities in MODES order (zeros allowed)."""
    unknown = sorted(set(mix) - set(MODES))
    if unknown:
        raise HeadMixError(f"unknown head(s) {unknown} in head_mix; choose from {list(MODES)}")
    weights = {m: float(mix.get(m, 0.0)) for m in MODES}
    if any(w < 0 or not np.isfinite(w) for w in weights.values()):
        raise HeadMixError(f"head_mix weights must be finite and >= 0, got {dict(mix)}")
    total = sum(weights.values())
    if total <= 0:
        raise HeadMixError("head_mix must give at least one head a positive weight")
    return {m: w / total for m, w in weights.items()}


class HeadSchedule:
    """`schedule(step)` -> the mode trained at that global step."""

    def __init__(self, mix: Mapping[str, float] | None = None, seed: int = 0):
        self.mix = check_mix(DEFAULT_MIX if mix is None else mix)
        self.seed = int(seed)
        self._modes = list(self.mix)
        self._cumulative = np.cumsum([self.mix[m] for m in self._modes])

    def __call__(self, step: int) -> str:
        u = np.random.default_rng([self.seed, int(step), 0x4EAD]).random()
        index = int(np.searchsorted(self._cumulative, u * self._cumulative[-1], side="right"))
        return self._modes[min(index, len(self._modes) - 1)]

    @staticmethod
    def inputs(mode: str, audio, visual) -> dict:
        """The keyword arguments of `model.classify` for a mode."""
        if mode not in MODES:
            raise HeadMixError(f"unknown head {mode!r}; choose from {list(MODES)}")
        return {"audio": audio if mode != "visual" else None,
                "visual": visual if mode != "audio" else None}
