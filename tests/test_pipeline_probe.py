"""The in-process MP4 header reader (`pipeline.mp4_probe`): on real ffmpeg-encoded files it gives
the MediaInfo ffprobe gives; odd, hostile and non-ISO files go to ffprobe (same result or same
error code as before); shards are the same bytes with and without it."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from fixtures import ffmpeg, make_clip, run_cli, shard_args, snapshot
from pipeline import errors, media, mp4_probe
from pipeline.params import ClipParams, MediaLimits

PARAMS = ClipParams()
LIMITS = MediaLimits()
LAVFI = ("-f", "lavfi", "-t")


def _encode(path: Path, *args: str) -> Path:
    ffmpeg(*args, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    x264_b = ("-c:v", "libx264", "-preset", "medium", "-bf", "3", "-g", "90", "-pix_fmt", "yuv420p")
    src = ("testsrc2=s=640x360:r=30",)
    _encode(d / "bframes_faststart.mp4", *LAVFI, "3", "-i", *src, *LAVFI, "3", "-i",
            "sine=r=44100", *x264_b, "-c:a", "aac", "-movflags", "+faststart")
    _encode(d / "moov_at_end.mp4", *LAVFI, "3", "-i", *src, *LAVFI, "3", "-i",
            "sine=r=48000,aformat=channel_layouts=stereo", *x264_b, "-c:a", "aac")
    for angle in (90, 270):
        ffmpeg("-i", str(d / "moov_at_end.mp4"), "-c", "copy", "-metadata:s:v:0",
               f"rotate={angle}", str(d / f"rotated{angle}.mp4"))
    make_clip(d / "mono44k.mp4", rate=44100, size=(96, 64))
    make_clip(d / "stereo48k.mp4", rate=48000, channels=2, size=(96, 64))
    make_clip(d / "video_only.mp4", audio=False, fps=30)
    make_clip(d / "audio_only.m4a", video=False, rate=48000)
    make_clip(d / "audio_only.mp4", video=False, rate=44100, channels=2)
    make_clip(d / "vfr.mp4", seconds=2.0, rate=44100,
              extra=("-vf", "setpts='if(lt(N,25),N/25,1+(N-25)/10)/TB'", "-fps_mode", "vfr"))
    make_clip(d / "ntsc.mp4", seconds=2.0, rate=48000, video_source="testsrc2=s=96x64:r=30000/1001")
    _encode(d / "hevc.mp4", *LAVFI, "2", "-i", "testsrc2=s=320x180:r=25", *LAVFI, "2", "-i",
            "sine=r=48000", "-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
            "log-level=error", "-c:a", "aac")
    _encode(d / "av1.mp4", *LAVFI, "1", "-i", "testsrc2=s=160x96:r=25", *LAVFI, "1", "-i",
            "sine=r=48000", "-c:v", "libaom-av1", "-cpu-used", "8", "-crf", "45", "-c:a", "aac")
    _encode(d / "vp9.mp4", *LAVFI, "1", "-i", "testsrc2=s=160x96:r=25", *LAVFI, "1", "-i",
            "sine=r=44100", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "aac")
    # a stream copy from 1.3 s: edit lists that start inside the media
    ffmpeg("-ss", "1.3", "-i", str(d / "moov_at_end.mp4"), "-c", "copy", str(d / "cut_copy.mp4"))
    # odd ones (ffprobe decides)
    make_clip(d / "low_rate_aac.mp4", rate=16000)          # may be an HE-AAC core
    make_clip(d / "fragmented.mp4", rate=44100, extra=("-movflags", "+frag_keyframe+empty_moov"))
    make_clip(d / "clip.mkv", rate=44100)
    ffmpeg("-i", str(d / "mono44k.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=45",
           str(d / "rotated45.mp4"))
    data = (d / "moov_at_end.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])      # the download stopped
    return d


WELL_FORMED = ["bframes_faststart.mp4", "moov_at_end.mp4", "rotated90.mp4", "rotated270.mp4",
               "mono44k.mp4", "stereo48k.mp4", "video_only.mp4", "audio_only.m4a",
               "audio_only.mp4", "vfr.mp4", "ntsc.mp4", "hevc.mp4", "av1.mp4", "vp9.mp4",
               "cut_copy.mp4"]


def ffprobe_json(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json",
                          str(path)], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def probe_both(path: Path, monkeypatch):
    """(fast path's result, ffprobe's result) of media.probe: a MediaInfo or an error code."""
    results = []
    for force in (None, "ffprobe"):
        if force:
            monkeypatch.setenv(mp4_probe.FORCE_ENV, force)
        else:
            monkeypatch.delenv(mp4_probe.FORCE_ENV, raising=False)
        try:
            results.append(media.probe(path, PARAMS, LIMITS))
        except errors.ClipError as exc:
            results.append(exc.code)
    monkeypatch.delenv(mp4_probe.FORCE_ENV, raising=False)
    return results


@pytest.mark.parametrize("name", WELL_FORMED)
def test_fast_path_reads_well_formed_files_exactly_as_ffprobe(files, name, monkeypatch):
    fields = mp4_probe.read(files / name, max_moov_bytes=LIMITS.probe_max_bytes)
    assert fields is not None, f"{name} should be read in-process"
    expected = media._parse_probe(ffprobe_json(files / name), PARAMS)
    assert media._parse_probe(fields, PARAMS) == expected
    fast, slow = probe_both(files / name, monkeypatch)
    assert fast == slow and isinstance(fast, media.MediaInfo)


def test_rotation_and_edit_lists_are_what_ffprobe_reports(files):
    rotated = media._parse_probe(mp4_probe.read(files / "rotated90.mp4", max_moov_bytes=1 << 20),
                                 PARAMS)
    assert (rotated.video.width, rotated.video.height, rotated.video.rotation) == (360, 640, 90)
    assert mp4_probe.read(files / "rotated270.mp4", max_moov_bytes=1 << 20)["streams"][0][
        "side_data_list"][0]["rotation"] == -90
    cut = media._parse_probe(mp4_probe.read(files / "cut_copy.mp4", max_moov_bytes=1 << 20), PARAMS)
    assert cut.duration < 2.0 and cut.audio.duration < 2.0   # the edit, not the whole media


@pytest.mark.parametrize("name", ["low_rate_aac.mp4", "fragmented.mp4", "clip.mkv",
                                  "rotated45.mp4", "truncated.mp4"])
def test_odd_files_fall_back_to_ffprobe_with_its_result(files, name, monkeypatch):
    assert mp4_probe.read(files / name, max_moov_bytes=LIMITS.probe_max_bytes) is None
    fast, slow = probe_both(files / name, monkeypatch)
    assert fast == slow
    if name == "truncated.mp4":
        assert fast == errors.PROBE_FAILED


def test_moov_over_the_cap_falls_back(files):
    path = files / "moov_at_end.mp4"
    assert mp4_probe.read(path, max_moov_bytes=1 << 20) is not None
    assert mp4_probe.read(path, max_moov_bytes=512) is None


def test_force_switch_and_non_regular_files_go_to_ffprobe(files, tmp_path, monkeypatch):
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert mp4_probe.read(fifo, max_moov_bytes=1 << 20) is None     # no blocking open
    assert time.monotonic() - start < 5
    assert mp4_probe.read(tmp_path, max_moov_bytes=1 << 20) is None
    monkeypatch.setenv(mp4_probe.FORCE_ENV, "ffprobe")
    assert mp4_probe.read(files / "mono44k.mp4", max_moov_bytes=1 << 20) is None


# --- hostile boxes --------------------------------------------------------------------------
def _boxes(data: bytes, start: int, end: int):
    at = start
    while at < end:
        size, kind = struct.unpack_from(">I4s", data, at)
        yield kind, at, size
        at += size


def _find(data: bytes, path: list[bytes]) -> int:
    """Offset of the box at `path` (e.g. [b"moov", b"trak"]) in a plain MP4's bytes."""
    start, end, at = 0, len(data), None
    for name in path:
        at = next(a for k, a, _ in _boxes(data, start, end) if k == name)
        start, end = at + 8, at + struct.unpack_from(">I", data, at)[0]
    return at


def _patched(files: Path, out: Path, path: list[bytes], size: bytes) -> Path:
    data = bytearray((files / "mono44k.mp4").read_bytes())
    at = _find(bytes(data), path)
    data[at:at + 4] = size
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("path,size", [
    ([b"moov"], struct.pack(">I", 0xFFFFFFF0)),              # larger than the file
    ([b"moov", b"trak"], struct.pack(">I", 0)),              # "to the end" inside a box
    ([b"moov", b"trak", b"mdia"], struct.pack(">I", 1)),     # 64-bit size that is not there
    ([b"moov", b"mvhd"], struct.pack(">I", 4)),              # smaller than its header
    ([b"moov", b"trak", b"tkhd"], struct.pack(">I", 8)),     # an empty full box
])
def test_hostile_box_sizes_fall_back_with_the_same_result(files, tmp_path, path, size, monkeypatch):
    bad = _patched(files, tmp_path / "bad.mp4", path, size)
    assert mp4_probe.read(bad, max_moov_bytes=LIMITS.probe_max_bytes) is None
    fast, slow = probe_both(bad, monkeypatch)
    assert fast == slow


def _nest(depth: int, leaf: bytes) -> bytes:
    for _ in range(depth):
        leaf = struct.pack(">I4s", 8 + len(leaf), b"trak") + leaf
    return leaf


@pytest.mark.parametrize("moov", [
    _nest(200, b""),                                               # deep nesting
    struct.pack(">I4s", 8, b"trak") * 5000,                        # many empty boxes
    struct.pack(">I4s", 0, b"trak") + b"\0" * 64,                  # a zero size that would loop
    struct.pack(">I4s", 16, b"moof") + b"\0" * 8,                  # an unknown box
])
def test_hostile_moov_contents_fall_back(tmp_path, moov, monkeypatch):
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"isom", 512, b"isom")
    bad = tmp_path / "hostile.mp4"
    bad.write_bytes(ftyp + struct.pack(">I4s", 8 + len(moov), b"moov") + moov)
    start = time.monotonic()
    assert mp4_probe.read(bad, max_moov_bytes=LIMITS.probe_max_bytes) is None
    assert time.monotonic() - start < 5
    fast, slow = probe_both(bad, monkeypatch)
    assert fast == slow


@pytest.mark.e2e
def test_shards_are_the_same_bytes_with_the_fast_path_and_with_ffprobe(files, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    names = ["moov_at_end.mp4", "rotated90.mp4", "mono44k.mp4", "vfr.mp4", "low_rate_aac.mp4"]
    assert [mp4_probe.read(files / n, max_moov_bytes=1 << 20) is None for n in names] == \
        [False] * 4 + [True]          # four read in-process, one by ffprobe
    rows = []
    for i, name in enumerate(names):
        (videos / f"clip{i:04d}.mp4").write_bytes((files / name).read_bytes())
        rows.append(f'clip{i:04d}, 0.000, 2.000, "/m/a{i % 2}"')
    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text('index,mid,display_name\n0,/m/a0,"A"\n1,/m/a1,"B"\n')
    manifest = tmp_path / "segments.csv"
    manifest.write_text("# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n"
                        + "\n".join(rows) + "\n")
    fast = tmp_path / "fast"
    slow = tmp_path / "slow"
    run_cli(*shard_args(manifest, labels, videos, fast, workers=1))
    run_cli(*shard_args(manifest, labels, videos, slow, workers=1),
            env={mp4_probe.FORCE_ENV: "ffprobe"})
    a, b = snapshot(fast), snapshot(slow)
    assert a == b and any(name.endswith(".tar") for name in a)
    summary = json.loads((fast / "dataset.json").read_text())
    assert summary["counts"]["ok"] == len(names)


def test_corrupted_header_bytes_never_raise_only_fall_back(files, tmp_path):
    """Any byte of a real moov overwritten (sizes, counts, descriptors): the in-process read gives a
    result or None (ffprobe decides), never an exception that would fail the clip as a crash."""
    import random

    data = (files / "mono44k.mp4").read_bytes()
    at = _find(data, [b"moov"])
    moov_size = struct.unpack_from(">I", data, at)[0]
    rng = random.Random(0)
    bad = tmp_path / "corrupt.mp4"
    for _ in range(400):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            corrupt[at + 8 + rng.randrange(moov_size - 8)] = rng.randrange(256)
        bad.write_bytes(bytes(corrupt))
        result = mp4_probe.read(bad, max_moov_bytes=LIMITS.probe_max_bytes)
        assert result is None or isinstance(result, dict)
