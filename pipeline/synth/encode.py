"""Encode one clip with ffmpeg: raw yuv420p frames on stdin plus a WAV file -> a container, reproducibly.

The single place that runs ffmpeg for `avsiam synth`. Single-threaded encoders and bitexact flags, with
metadata stripped, make the output a function of the input bytes only (same seed, same bytes).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg
import numpy as np

STDERR_TAIL = 2000


@dataclass(frozen=True)
class Container:
    """How one container is written: muxer name, codec options, audio sample rate."""

    muxer: str
    video: dict = field(default_factory=dict)
    audio: dict = field(default_factory=dict)
    sample_rate: int = 44100


_H264 = {"c:v": "libx264", "preset": "ultrafast", "pix_fmt": "yuv420p"}
# AAC dominates the encode time: the "fast" coder without PNS/IS/TNS at 64k is ~2x quicker than
# ffmpeg's default (twoloop, 128k) and plenty for synthetic tones (see BENCHMARKS.md).
_AAC = {"c:a": "aac", "aac_coder": "fast", "aac_pns": 0, "aac_is": 0, "aac_tns": 0, "b:a": "64k"}
FORMATS: dict[str, Container] = {
    "mp4": Container("mp4", _H264, _AAC, 44100),
    "mkv": Container("matroska", _H264, _AAC, 44100),
    "mov": Container("mov", _H264, _AAC, 44100),
    "webm": Container("webm", {"c:v": "libvpx-vp9", "deadline": "realtime", "cpu-used": 8,
                               "row-mt": 0, "lag-in-frames": 0, "crf": 40, "b:v": 0,
                               "pix_fmt": "yuv420p"},
                      {"c:a": "libopus", "b:a": "96k"}, 48000),
}
# No version strings, dates or random ids in the output.
BITEXACT = {"fflags": "+bitexact", "flags:v": "+bitexact", "flags:a": "+bitexact",
            "map_metadata": -1, "map_chapters": -1}


class EncodeError(RuntimeError):
    """ffmpeg failed or timed out; the message names the file and carries ffmpeg's stderr tail."""


def encode_command(out_path: str | Path, wav_path: str | Path, fmt: str, *, width: int, height: int,
                   fps: int) -> list[str]:
    """The ffmpeg argument list that reads yuv420p frames from stdin and audio from `wav_path`."""
    container = FORMATS[fmt]
    video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="yuv420p", s=f"{width}x{height}",
                         framerate=fps)
    audio = ffmpeg.input(str(wav_path))
    options = {**container.video, **container.audio, **BITEXACT, "format": container.muxer,
               "threads": 1, "g": 2 * fps}
    stream = ffmpeg.output(video.video, audio.audio, str(out_path), **options)
    stream = stream.global_args("-hide_banner", "-nostats", "-loglevel", "error")
    return stream.overwrite_output().compile(cmd="ffmpeg")


def _grow_pipe(pipe) -> None:
    """Use a 1 MiB pipe buffer where Linux allows it: fewer wake-ups per frame block."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


def run_encoder(command: list[str], frames: Iterable[np.ndarray], out_path: Path,
                timeout_s: float) -> None:
    """Run `command`, stream the frame blocks into its stdin, wait; raise EncodeError on failure."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        _grow_pipe(proc.stdin)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.start()
        fed = False
        try:
            try:
                for block in frames:
                    proc.stdin.write(memoryview(np.ascontiguousarray(block)).cast("B"))
                proc.stdin.close()
                fed = True
            except (BrokenPipeError, ValueError):
                pass  # ffmpeg stopped reading; its return code and stderr say why
            returncode = proc.wait()
        finally:
            watchdog.cancel()
            try:
                proc.stdin.close()
            except OSError:
                pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if returncode != 0 or timed_out.is_set() or not fed:
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", "replace")[-STDERR_TAIL:].strip()
            why = (f"timed out after {timeout_s:g} s" if timed_out.is_set() else
                   f"exit code {returncode}" if returncode else "stopped reading frames early")
            raise EncodeError(f"ffmpeg {why} while writing {out_path}: {tail or '(no stderr)'}\n"
                              f"command: {' '.join(command)}\n"
                              "fix: check that this ffmpeg has the encoder (ffmpeg -encoders), that "
                              "the output folder is writable and the disk not full; on a busy "
                              "machine, raise SynthConfig.timeout_s")


def encode_clip(out_path: str | Path, frames: Iterable[np.ndarray], wav_path: str | Path, fmt: str, *,
                width: int, height: int, fps: int, timeout_s: float) -> None:
    """Encode into a temporary name beside `out_path`, then rename it into place atomically."""
    out_path = Path(out_path).absolute()  # absolute: ids starting with '-' are not options
    partial = out_path.with_name(f".{out_path.name}.partial")
    command = encode_command(partial, wav_path, fmt, width=width, height=height, fps=fps)
    try:
        run_encoder(command, frames, out_path, timeout_s)
        os.replace(partial, out_path)
    finally:
        if partial.exists():
            partial.unlink()
