"""Shared helpers for the sharding-stage tests: small real clips made by ffmpeg, CLI runs, file
snapshots. (No tests here; imported as `tests.test_pipeline_fixtures`.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARD_SUFFIXES = (".tar", ".parquet", ".json")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True, timeout=120)


def make_clip(path: Path, *, seconds: float = 1.0, size: tuple[int, int] = (96, 64), fps: int = 25,
              audio: bool = True, video: bool = True, rate: int = 16000, channels: int = 1,
              video_source: str | None = None, extra: tuple[str, ...] = ()) -> Path:
    """A real encoded clip: testsrc2 video (H.264) and a sine tone (AAC, or PCM in .wav/.mkv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs: list[str] = []
    if video:
        source = video_source or f"testsrc2=s={size[0]}x{size[1]}:r={fps}"
        inputs += ["-f", "lavfi", "-t", str(seconds), "-i", source]
    if audio:
        layout = "mono" if channels == 1 else "stereo"
        inputs += ["-f", "lavfi", "-t", str(seconds), "-i",
                   f"sine=f=440:r={rate},aformat=channel_layouts={layout}"]
    codecs: list[str] = []
    if video:
        codecs += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        codecs += ["-c:a", "pcm_s16le" if path.suffix in (".wav", ".mkv") else "aac"]
    ffmpeg(*inputs, *codecs, *extra, str(path))
    return path


def run_cli(*args: str, env: dict | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m cluster.cli ARGS` in the repository, output captured."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=REPO, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"avsiam {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def snapshot(out_dir: Path) -> dict[str, bytes]:
    """Every output file of a sharded folder (not logs/), by name."""
    return {p.name: p.read_bytes() for p in sorted(Path(out_dir).iterdir())
            if p.is_file() and p.suffix in SHARD_SUFFIXES}


def shard_args(manifest: Path, labels: Path | None, videos: Path, out: Path, *extra: str,
               workers: int = 2) -> list[str]:
    args = ["shard", "--manifest", str(manifest), "--videos", str(videos), "--out", str(out),
            "--workers", str(workers), "--no-progress", "--frame-size", "64", "--num-frames", "4"]
    if labels is not None:
        args += ["--labels", str(labels)]
    return args + list(extra)


def synth_segments(root: Path, *, clips: int, classes: int, seed: int) -> tuple[dict, list[str]]:
    """A synthetic dataset of 2-s 160x120 25-fps clips under root/synth (`write_dataset`'s summary)
    and one AudioSet segments-CSV row per clip: `YTID, 0.000, 2.000, "label,..."`."""
    from pipeline.synth import SynthConfig, write_dataset

    summary = write_dataset(SynthConfig(out=root / "synth", clips=clips, classes=classes, seed=seed,
                                        seconds=2.0, size=(160, 120), fps=25, workers=2))
    rows = [f'{c["ytid"]}, 0.000, 2.000, "{",".join(c["labels"])}"' for c in summary["clips"]]
    return summary, rows
