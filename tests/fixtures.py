"""Shared helpers for the sharding-stage tests: small real clips made by ffmpeg, CLI runs, file
snapshots. (No tests here; imported as `fixtures` by the test modules.)"""
from __future__ import annotations

import os
import shutil
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


# --- AudioSet / VGGSound as users hold them -----------------------------------------------------
# The published CSVs' shapes (three '#' lines, ", " separators, quoted label lists, ids starting
# with '-' or '--'; VGGSound headerless with quoted labels that hold commas), and media in both
# layouts: full-length videos and files already cut to their 10-s segment.
SOURCE_SECONDS = 45
# a chirp: 200 Hz rising 40 Hz per second, so each 10 ms of the source has its own spectrum and a
# stored fbank tells which window of the source it came from
CHIRP = "0.5*sin(2*PI*(200*t+20*t*t))"
AUDIOSET_HEAD = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                 "# num_ytids=8, num_segs=8, num_unique_labels=4, num_positive_labels=12\n"
                 "# YTID, start_seconds, end_seconds, positive_labels\n")
# (ytid, start, end, labels, what the file is in the full layout, in the cut layout)
AUDIOSET_ROWS = (
    ("--4gqARaEJE", 0, 10, "/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk", "source", "window"),
    ("-0a0cqWQH2s", 10, 20, "/m/09x0r", "source", "window"),
    ("-1pRmoJIGQc", 30, 40, "/m/09x0r,/m/07q6cd_", "source", "window"),
    ("--7seventen", 7, 17, "/m/0jbk", "source", "window"),
    ("-seventyPct", 0, 10, "/m/09x0r,/m/0jbk", "first7", "first7"),       # 7 s of a 10-s window
    ("--shortHalf", 30, 40, "/m/068hy", "short4", "short4"),            # 4 s: under half
    ("-truncated1", 30, 40, "/m/07q6cd_,/m/09x0r", "truncated_source", "truncated_window"),
    ("--missing01", 0, 10, "/m/068hy,/m/0jbk", None, None),
)
AUDIOSET_LABELS = ('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/068hy,"Domestic animals, '
                   'pets"\n2,/m/07q6cd_,"Squeak"\n3,/m/0bt9lr,"Dog"\n4,/m/0jbk,"Animal"\n')
VGGSOUND_ROWS = (       # (ytid, start, label, split, file)
    ("---g-f_I2yQ", 30, "people marching, outdoors", "train", "source"),   # a full-length file
    ("--0PQM4-hqg", 10, "dog barking, growling", "test", "window"),        # cut to its segment
)


def encode_youtube_like(path: Path, source: Path | None = None, start: float = 0.0,
                        seconds: float = SOURCE_SECONDS, faststart: bool = False) -> Path:
    """H.264 with B-frames (x264 veryfast, 2-s GOP) + AAC 44.1 kHz stereo, 64x48, like a YouTube
    download: the chirp source itself, or [start, start + seconds] of `source` re-encoded (a file
    cut to its segment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is None:
        inputs = ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25", "-f", "lavfi", "-i",
                  f"aevalsrc='{CHIRP}':s=44100:c=stereo", "-t", str(seconds)]
    else:
        inputs = ["-ss", str(start), "-t", str(seconds), "-i", str(source)]
    ffmpeg(*inputs, "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "50",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k",
           *(["-movflags", "+faststart"] if faststart else []), str(path))
    return path


def write_truncated(path: Path, source: Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of a file's bytes (a download that stopped)."""
    data = source.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def published_dataset(root: Path) -> dict:
    """AudioSet CSVs (with the '#' lines and headerless), class_labels_indices.csv, a VGGSound
    CSV, and folders `full` and `cut` holding AUDIOSET_ROWS' files in each layout (and `vgg`
    holding VGGSOUND_ROWS' files named {ytid}_{start:06d}.mp4)."""
    source = encode_youtube_like(root / "source.mp4", faststart=True)
    made: dict[tuple, Path] = {}

    def media(kind: str, start: float, end: float) -> Path:
        key = (kind, start, end)
        if key not in made:
            name = root / "media" / f"{kind}_{start:g}_{end:g}.mp4"
            if kind == "source":
                made[key] = source
            elif kind == "window":
                made[key] = encode_youtube_like(name, source, start, end - start)
            elif kind == "first7":
                made[key] = encode_youtube_like(name, source, start, 7)
            elif kind == "short4":
                made[key] = encode_youtube_like(name, source, start, 4)
            elif kind == "truncated_source":
                made[key] = write_truncated(name, source)
            elif kind == "truncated_window":
                whole = encode_youtube_like(name.with_suffix(".whole.mp4"), source, start,
                                            end - start, faststart=True)
                made[key] = write_truncated(name, whole)
        return made[key]

    for layout, column in (("full", 4), ("cut", 5)):
        (root / layout).mkdir()
        for row in AUDIOSET_ROWS:
            if row[column] is not None:
                shutil.copy(media(row[column], row[1], row[2]), root / layout / f"{row[0]}.mp4")
    (root / "vgg").mkdir()
    for ytid, start, _, _, kind in VGGSOUND_ROWS:
        shutil.copy(media(kind, start, start + 10), root / "vgg" / f"{ytid}_{start:06d}.mp4")
    lines = [f'{r[0]}, {r[1]:.3f}, {r[2]:.3f}, "{r[3]}"\n' for r in AUDIOSET_ROWS]
    (root / "balanced_train_segments.csv").write_text(AUDIOSET_HEAD + "".join(lines))
    (root / "headerless_segments.csv").write_text("".join(lines))
    (root / "class_labels_indices.csv").write_text(AUDIOSET_LABELS)
    (root / "vggsound.csv").write_text("".join(f'{y},{s},"{label}",{split}\n'
                                               for y, s, label, split, _ in VGGSOUND_ROWS))
    return dict(root=root, source=source, full=root / "full", cut=root / "cut",
                vgg=root / "vgg", audioset=root / "balanced_train_segments.csv",
                headerless=root / "headerless_segments.csv",
                labels=root / "class_labels_indices.csv",
                vggsound=root / "vggsound.csv")


def tiny_shards(root: Path, *, classes: int = 3, clips: int = 9) -> Path:
    """`clips` synthetic 2-s clips of `classes` classes, sharded 5 per shard with 2 frames of 32 px
    (`avsiam synth` then `avsiam shard`, as a user runs them); returns the shard folder."""
    synth = root / "synth"
    run_cli("synth", "--out", str(synth), "--clips", str(clips), "--classes", str(classes),
            "--seconds", "2", "--size", "96x64", "--workers", "2", "--test-fraction", "0")
    run_cli("shard", "--manifest", str(synth / "balanced_train_segments.csv"),
            "--labels", str(synth / "class_labels_indices.csv"), "--videos", str(synth / "videos"),
            "--out", str(root / "shards"), "--num-frames", "2", "--frame-size", "32",
            "--samples-per-shard", "5", "--workers", "2", "--no-progress")
    return root / "shards"
