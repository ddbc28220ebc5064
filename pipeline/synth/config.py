"""`SynthConfig`: what `avsiam synth` makes, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.synth.classes import MAX_CLASSES
from pipeline.synth.encode import FORMATS


class SynthConfigError(ValueError):
    """An invalid synthetic-dataset parameter; the message says which one and how to fix it."""


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SynthConfigError(f"bad --size {text!r}: expected WIDTHxHEIGHT, e.g. 320x240")
    return int(parts[0]), int(parts[1])


def parse_formats(text: str) -> tuple[str, ...]:
    """'mp4,webm' -> ('mp4', 'webm'); the names are checked by SynthConfig."""
    return tuple(p.strip().lower().lstrip(".") for p in text.split(",") if p.strip())


@dataclass(kw_only=True)
class SynthConfig:
    """Parameters of one synthetic dataset. Everything but `out` and `workers` defines the bytes."""

    out: str | Path
    """Output folder (created); re-running with the same parameters resumes it."""
    clips: int
    """Number of clips (>= 1)."""
    classes: int
    """Number of classes (>= 1); class k is the same recipe whatever the total."""
    seed: int = 0
    """Seed of every random choice: same seed, same bytes."""
    seconds: float = 10.0
    """Clip duration in seconds."""
    size: tuple[int, int] = (320, 240)
    """Frame (width, height), both even and >= 32."""
    formats: tuple[str, ...] = ("mp4",)
    """Containers; clip i uses formats[i % len(formats)]. Known: see encode.FORMATS."""
    fps: int = 25
    """Frames per second of the video stream."""
    workers: int = 2
    """Parallel encoder processes; does not change the output."""
    multi_label_fraction: float = 0.15
    """Fraction of clips that show and sound two classes (two labels)."""
    test_fraction: float = 0.2
    """Fraction of each class's clips put in the test split."""
    timeout_s: float = field(default=0.0)
    """Per-clip ffmpeg time limit; 0 means 60 s + 10x the clip duration."""

    def __post_init__(self) -> None:
        if isinstance(self.size, str):
            self.size = parse_size(self.size)
        if isinstance(self.formats, str):
            self.formats = parse_formats(self.formats)
        self.size = tuple(int(v) for v in self.size)
        self.formats = tuple(self.formats)
        self._check()

    def _check(self) -> None:
        def fail(message: str) -> None:
            raise SynthConfigError(message)

        if not str(self.out):
            fail("out must name a folder")
        if int(self.clips) != self.clips or self.clips < 1:
            fail(f"clips must be an integer >= 1, got {self.clips!r}")
        if int(self.classes) != self.classes or not 1 <= self.classes <= MAX_CLASSES:
            fail(f"classes must be an integer in 1..{MAX_CLASSES}, got {self.classes!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            fail(f"seed must be an integer >= 0, got {self.seed!r}")
        if not self.seconds > 0:
            fail(f"seconds must be > 0, got {self.seconds!r}")
        width, height = self.size if len(self.size) == 2 else (0, 0)
        if len(self.size) != 2 or width < 32 or height < 32 or width % 2 or height % 2:
            fail(f"size must be (width, height), both even and >= 32, got {self.size!r}")
        if not self.formats:
            fail("formats must name at least one container, e.g. mp4")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            fail(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
        if int(self.fps) != self.fps or not 1 <= self.fps <= 120:
            fail(f"fps must be an integer in 1..120, got {self.fps!r}")
        if round(self.seconds * self.fps) < 1:
            fail(f"seconds x fps must give at least one frame, got {self.seconds} s at {self.fps} fps")
        if int(self.workers) != self.workers or self.workers < 1:
            fail(f"workers must be an integer >= 1, got {self.workers!r}")
        for name in ("multi_label_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                fail(f"{name} must be in [0, 1], got {value!r}")
        if self.timeout_s < 0:
            fail(f"timeout_s must be >= 0, got {self.timeout_s!r}")

    @property
    def num_frames(self) -> int:
        return round(self.seconds * self.fps)

    @property
    def clip_timeout_s(self) -> float:
        return self.timeout_s or 60.0 + 10.0 * self.seconds

    def identity(self) -> dict:
        """The parameters that decide the output bytes (stored in synth.json, checked on resume)."""
        return {"clips": self.clips, "classes": self.classes, "seed": self.seed,
                "seconds": self.seconds, "size": list(self.size), "formats": list(self.formats),
                "fps": self.fps, "multi_label_fraction": self.multi_label_fraction,
                "test_fraction": self.test_fraction}
