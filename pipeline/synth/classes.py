"""The class table: class k pairs a visual appearance with a sound, the same recipe for every dataset.

Recipes are picked greedily from a fixed, shuffled pool of attribute combinations so that each new class
differs from every earlier one in as many of its eight attributes as possible (the first 40 classes
differ pairwise in at least 5).
Class k therefore does not depend on how many classes are asked for, nor on the seed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SHAPES = ("square", "circle", "triangle", "ring", "cross", "diamond")
TEXTURES = ("plain", "striped", "checkered")
# Well separated hues, as (name, RGB).
COLOURS = (("red", (220, 40, 40)), ("orange", (240, 140, 20)), ("yellow", (235, 220, 40)),
           ("green", (40, 190, 60)), ("cyan", (30, 200, 210)), ("blue", (40, 70, 230)),
           ("purple", (140, 50, 200)), ("magenta", (230, 50, 180)))
MOTIONS = ("bouncing sideways", "bouncing up and down", "circling", "growing and shrinking")
TIMBRES = ("tone", "buzz", "brass", "hiss")  # sine, odd harmonics, all harmonics, band noise
PATTERNS = ("steady", "rising", "falling", "alternating")
RHYTHMS = (0.0, 2.0, 3.0, 5.0)  # pulses per second; 0 = continuous
REGISTERS = (("low", 147.0), ("mid", 247.0), ("high", 415.0), ("very high", 698.0))

_ATTRIBUTE_SIZES = (len(SHAPES), len(TEXTURES), len(COLOURS), len(MOTIONS), len(TIMBRES),
                    len(PATTERNS), len(RHYTHMS), len(REGISTERS))
_POOL_SIZE = 4096
_POOL_SEED = 0x5EED_A5
MAX_CLASSES = _POOL_SIZE
_MID_ALPHABET = "0123456789bcdfghjklmnpqrstvwxyz_"


@dataclass(frozen=True)
class ClassRecipe:
    """One class: what it looks like and how it sounds."""

    index: int
    mid: str
    display_name: str
    shape: str
    texture: str
    colour: str
    rgb: tuple[int, int, int]
    motion: str
    timbre: str
    pattern: str
    pulse_hz: float
    register: str
    base_hz: float

    def describe(self) -> dict:
        """A JSON-ready description (for synth.json)."""
        return {"index": self.index, "mid": self.mid, "display_name": self.display_name,
                "visual": {"shape": self.shape, "texture": self.texture, "colour": self.colour,
                           "rgb": list(self.rgb), "motion": self.motion},
                "sound": {"timbre": self.timbre, "pattern": self.pattern, "pulse_hz": self.pulse_hz,
                          "register": self.register, "base_hz": self.base_hz}}


def _pool() -> np.ndarray:
    """A fixed random sample of attribute combinations, one row each (int8 attribute indices)."""
    rng = np.random.default_rng(_POOL_SEED)
    total = int(np.prod(_ATTRIBUTE_SIZES))
    flat = rng.choice(total, size=_POOL_SIZE, replace=False)
    return np.stack(np.unravel_index(flat, _ATTRIBUTE_SIZES), axis=1).astype(np.int8)


@lru_cache(maxsize=8)
def _greedy_rows(count: int) -> tuple[tuple[int, ...], ...]:
    """The first `count` rows of the max-min-Hamming-distance order of the pool."""
    pool = _pool()
    nearest = np.full(len(pool), np.iinfo(np.int16).max, dtype=np.int16)
    rows = []
    for _ in range(count):
        pick = int(np.argmax(nearest))  # first of the most distant: deterministic
        rows.append(tuple(int(v) for v in pool[pick]))
        nearest = np.minimum(nearest, (pool != pool[pick]).sum(axis=1).astype(np.int16))
        nearest[pick] = -1
    return tuple(rows)


def _mid(index: int) -> str:
    """A Freebase-like machine id '/m/0xxxxx', derived from the class index."""
    digest = hashlib.sha256(f"avsiam-synth-class-{index}".encode()).digest()
    return "/m/0" + "".join(_MID_ALPHABET[b % len(_MID_ALPHABET)] for b in digest[:5])


def _display_name(index: int, shape: str, texture: str, colour: str, motion: str, register: str,
                  pattern: str, timbre: str, pulse_hz: float) -> str:
    looks = f"{colour.capitalize()} {'' if texture == 'plain' else texture + ' '}{shape} {motion}"
    sound = f"{register} {pattern} {timbre}"
    if pulse_hz:
        sound += f" in {pulse_hz:g} beats per second"
    # Every other name contains a comma, as many AudioSet/VGGSound names do.
    return f"{looks}, {sound}" if index % 2 else f"{looks} with {sound}"


def make_classes(count: int) -> list[ClassRecipe]:
    """Classes 0..count-1."""
    if not 1 <= count <= MAX_CLASSES:
        raise ValueError(f"classes must be in 1..{MAX_CLASSES}, got {count}")
    recipes = []
    for index, row in enumerate(_greedy_rows(count)):
        shape, texture, colour_i, motion, timbre, pattern, rhythm, register_i = row
        colour, rgb = COLOURS[colour_i]
        register, base_hz = REGISTERS[register_i]
        parts = dict(shape=SHAPES[shape], texture=TEXTURES[texture], colour=colour,
                     motion=MOTIONS[motion], register=register, pattern=PATTERNS[pattern],
                     timbre=TIMBRES[timbre], pulse_hz=RHYTHMS[rhythm])
        recipes.append(ClassRecipe(index=index, mid=_mid(index),
                                   display_name=_display_name(index, **parts), rgb=rgb,
                                   base_hz=base_hz, **parts))
    mids = [r.mid for r in recipes]
    assert len(set(mids)) == len(mids), "class mid collision: change _mid's salt"
    return recipes
