"""Hardening of the sharding stage against hostile media (issue 9): every ffmpeg/ffprobe call is
bounded in time, output and memory; absurd claims fail before decoding; a dying worker is replaced
and its row recorded; sample keys cannot escape the extraction folder; decode memory stays bounded
for a 4K clip and a 2-hour file."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.cli import main as cli
from pipeline import errors, media
from pipeline.bounded_process import STDOUT, OutputLimitExceeded, run_bounded
from pipeline.clip import (FAULT_CHILD, FAULT_EXIT_ENV, FAULT_HANG_ENV, ClipContext, ClipTask,
                           process_clip)
from pipeline.params import ClipParams, MediaLimits
from shards import format as fmt
from fixtures import REPO, ffmpeg, make_clip, run_cli

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    make_clip(d / "ok.mp4", seconds=1.0)
    os.mkfifo(d / "blocks.mp4")
    # claims 20000x10000 pixels in an 8 KB AVI (one 56x40 raw frame, headers patched)
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=56x40:r=1", "-frames:v", "1", "-c:v", "rawvideo",
           "-pix_fmt", "gray", str(d / "small.avi"))
    (d / "huge.avi").write_bytes((d / "small.avi").read_bytes().replace(
        struct.pack("<ii", 56, 40), struct.pack("<ii", 20000, 10000)))
    # a 1-s Matroska file whose header claims 1e9 seconds
    make_clip(d / "short.mkv", seconds=1.0)
    data = bytearray((d / "short.mkv").read_bytes())
    at = data.find(b"\x44\x89\x88")            # Segment Info / Duration, 8-byte float (ms)
    data[at + 3:at + 11] = struct.pack(">d", 1e12)
    (d / "claims_long.mkv").write_bytes(bytes(data))
    return d


def _ctx(folder: Path, **params) -> ClipContext:
    return ClipContext(str(folder), ClipParams(**{"num_frames": 2, "frame_size": 32, **params}),
                       MediaLimits(probe_timeout_s=5, decode_timeout_s=10), "h")


def _task(name: str, source: str = "s", start=None, end=None) -> ClipTask:
    return ClipTask(row=0, key="k", source_id=source, candidates=(name,), start=start, end=end,
                    labels=(), label_indices=())


@pytest.mark.timeout(60)
def test_probe_and_decode_of_a_blocking_file_time_out(clips):
    limits = MediaLimits(probe_timeout_s=1.0, decode_timeout_s=1.0)
    began = time.monotonic()
    with pytest.raises(errors.ClipError) as probe_error:
        media.probe(clips / "blocks.mp4", ClipParams(), limits)
    assert probe_error.value.code == errors.TIMEOUT
    assert "ffprobe did not finish within 1 s" in probe_error.value.reason
    info = media.MediaInfo(duration=1.0, audio=media.AudioStream(0, 16000, 1), video=None)
    with pytest.raises(errors.ClipError) as decode_error:
        media.decode_window(clips / "blocks.mp4", info, start=0.0, seconds=1.0, frame_indices=[],
                            want_audio=True, want_video=False, params=ClipParams(), limits=limits)
    assert decode_error.value.code == errors.TIMEOUT
    assert time.monotonic() - began < 10
    # through the stage the FIFO is refused before any process opens it
    result = process_clip(_task("blocks.mp4"), _ctx(clips))
    assert result.reason.startswith("not_regular_file:") and "is a FIFO" in result.reason


@pytest.mark.timeout(60)
def test_output_of_a_child_is_bounded_and_the_child_killed():
    began = time.monotonic()
    with pytest.raises(OutputLimitExceeded, match="exceeded 1048576 bytes"):
        run_bounded(lambda urls: ["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                                  "testsrc=s=640x480:r=25", "-f", "rawvideo", urls[STDOUT]],
                    outputs={STDOUT: 1 << 20}, timeout_s=30)
    assert time.monotonic() - began < 10     # killed at the limit, not after 30 s


def test_absurd_dimensions_and_durations_fail_before_decoding(clips):
    huge = process_clip(_task("huge.avi"), _ctx(clips, keep_single_modality=True))
    assert huge.reason.startswith("absurd_dimensions: video stream claims 20000x10000")
    long = process_clip(_task("claims_long.mkv"), _ctx(clips))
    assert long.reason.startswith("absurd_duration: file claims 1000000000.0 s")


def test_ffmpeg_address_space_is_limited(clips):
    info = media.probe(clips / "ok.mp4", ClipParams(), MediaLimits())
    tight = MediaLimits(ffmpeg_memory_mb=256)
    with pytest.raises(errors.ClipError) as error:
        media.decode_window(clips / "ok.mp4", info, start=0.0, seconds=1.0, frame_indices=[0],
                            want_audio=True, want_video=True, params=ClipParams(frame_size=32),
                            limits=tight)
    assert error.value.code == errors.DECODE_FAILED
    decoded = media.decode_window(clips / "ok.mp4", info, start=0.0, seconds=1.0,
                                  frame_indices=[0], want_audio=True, want_video=True,
                                  params=ClipParams(frame_size=32), limits=MediaLimits())
    assert len(decoded.frames) == 1


def _generic_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path"])
        writer.writerows(rows)
    return path


def test_a_dying_worker_is_replaced_and_its_row_recorded(clips, tmp_path):
    """clip2 kills its worker while that worker holds clip0..clip2 (--decode-batch 3): the
    three are redone one per worker, so only clip2 fails."""
    rows = [(f"clip{i}", "ok.mp4") for i in range(5)]
    manifest = _generic_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    run_cli("shard", "--manifest", str(manifest), "--videos", str(clips), "--out", str(out),
            "--workers", "2", "--no-progress", "--frame-size", "32", "--num-frames", "2",
            "--decode-batch", "3", env={FAULT_EXIT_ENV: "clip2"})
    record = pq.read_table(out / "train-000000.parquet").to_pylist()
    assert [r["status"] for r in record] == ["ok", "ok", "failed", "ok", "ok"]
    assert record[2]["reason"] == ("worker_died: worker process exited with code 86 while making "
                                   "this sample; the worker was replaced")
    assert cli(["verify", "--out", str(out)]) == 0
    assert not _running(FAULT_CHILD), "the dead worker's child (its ffmpeg) was left running"


_BATCH_TIMEOUT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from pipeline.clip import ClipContext, ClipTask
from pipeline.params import ClipParams, MediaLimits
from pipeline.workers import WorkerFailure, WorkerPool

context = ClipContext(sys.argv[1], ClipParams(num_frames=2, frame_size=32), MediaLimits(), "h")
tasks = [ClipTask(row=i, key=name, source_id=name, candidates=("ok.mp4",), start=None, end=None,
                  labels=(), label_indices=()) for i, name in enumerate(["ok", "hangs"])]
done = {}
with WorkerPool(1, context, task_timeout_s=4.0) as pool:
    pool.submit_batch([(task.source_id, task) for task in tasks])
    while pool.in_flight():
        done.update(pool.wait(timeout=1.0))
print(json.dumps({tag: result.reason if isinstance(result, WorkerFailure) else result.status
                  for tag, result in done.items()}))
"""


def test_a_batch_past_its_time_limit_is_redone_row_by_row(clips):
    """A worker holding [ok, hangs] runs past its limit and is killed; both rows are given out
    again one per worker: `ok` is made, `hangs` alone runs past the limit and fails as
    worker_timeout. (A process of its own: the workers' forkserver keeps the environment it
    started with.)"""
    result = subprocess.run([sys.executable, "-c", _BATCH_TIMEOUT, str(clips), str(REPO)],
                            env={**os.environ, FAULT_HANG_ENV: "hangs"}, capture_output=True,
                            text=True, timeout=120, check=True)
    done = json.loads(result.stdout.splitlines()[-1])
    assert done["ok"] == fmt.STATUS_OK
    assert done["hangs"].startswith("worker_timeout: no result within 4 s"), done


def _running(argv: tuple[str, ...]) -> list[int]:
    """Pids of live processes with exactly this command line."""
    wanted, found = "\0".join(argv) + "\0", []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_text() == wanted:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_hostile_ids_give_safe_keys_and_tar_stays_in_its_folder(clips, tmp_path):
    (tmp_path / "outside.mp4").write_bytes((clips / "ok.mp4").read_bytes())
    manifest = _generic_manifest(tmp_path / "m.csv", [
        ("../../evil", "ok.mp4"), ("/etc/evil", "ok.mp4"), ("bell\x07new\nline\ttab", "ok.mp4"),
        ("../outside", "")])                   # no path: the template gives ../outside.mp4
    out = tmp_path / "out"
    assert cli(["shard", "--manifest", str(manifest), "--videos", str(clips), "--out", str(out),
                "--workers", "1", "--no-progress", "--frame-size", "32", "--num-frames",
                "2"]) == 0
    record = pq.read_table(out / "train-000000.parquet").to_pylist()
    assert [r["status"] for r in record] == ["ok", "ok", "ok", "failed"]
    assert record[3]["reason"] == f"unsafe_path: '../outside' would leave {clips}"
    assert all(fmt.is_safe_key(r["key"]) for r in record)
    target = tmp_path / "a" / "b" / "extract"
    target.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(out / "train-000000.tar"), "-C", str(target)], check=True)
    extracted = {p.relative_to(target).as_posix() for p in target.rglob("*")}
    assert len(extracted) == 3 * 4 and all("/" not in name for name in extracted)
    assert not [p for p in tmp_path.rglob("*evil*") if target not in p.parents]


def _long_file(folder: Path) -> Path:
    """A 2-hour H.264+AAC file made in about a second: one 60-s segment concatenated 120 times."""
    make_clip(folder / "segment.mp4", seconds=60, fps=1, rate=8000,
                        video_source="color=c=blue:s=64x64:r=1", extra=("-b:a", "8k"))
    (folder / "list.txt").write_text("file 'segment.mp4'\n" * 120)
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(folder / "list.txt"), "-c", "copy",
           str(folder / "two_hours.mp4"))
    return folder / "two_hours.mp4"


def test_4k_clip_and_two_hour_file_decode_within_bounded_memory(tmp_path):
    """Per-clip memory is bounded: frames are selected/scaled/cropped inside ffmpeg and only the
    window's audio is decoded, so the worker grows by far less than one 4K frame set or a 2-hour
    waveform, and ffmpeg stays within its documented bound."""
    make_clip(tmp_path / "uhd.mp4", seconds=0.4, size=(3840, 2160),
              extra=("-crf", "45", "-g", "100"))
    _long_file(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,start,end\nuhd,uhd.mp4,,\nlong,two_hours.mp4,3600,3610\n"
                        "whole,two_hours.mp4,,\n")
    out = tmp_path / "out"
    assert cli(["shard", "--manifest", str(manifest), "--videos", str(tmp_path), "--out",
                str(out), "--workers", "1", "--no-progress"]) == 0
    record = pq.read_table(out / "train-000000.parquet").to_pylist()
    assert [r["status"] for r in record] == ["ok", "ok", "failed"], record
    assert record[2]["reason"].startswith("window_too_long: window of 7200.")
    log = (out / "logs" / "shard-task0000-of-0001.jsonl").read_text().splitlines()
    memory = next(json.loads(line)["resources"] for line in log if '"summary"' in line)
    full_frames_kb = 10 * 3840 * 2160 * 3 // 1024           # 243 MiB of raw 4K frames
    two_hour_audio_kb = 7200 * 16000 * 2 // 1024              # 225 MiB of 16 kHz s16
    growth = memory["worker_peak_kb"] - memory["worker_base_kb"]
    assert 0 < growth < 64 * 1024 < min(full_frames_kb, two_hour_audio_kb) // 3, memory
    assert 0 < memory["ffmpeg_peak_kb"] < 400 * 1024, memory


# --- ffmpeg reads only the file it is given (issue 14) ------------------------------------------
@pytest.fixture(scope="module")
def playlists(tmp_path_factory):
    """Files named like videos under videos/ that would make ffmpeg read other files: an HLS
    playlist of a clip outside videos/, one of a FIFO, an ffconcat list, an SDP description and a
    PNG image (an image sequence of one)."""
    root = tmp_path_factory.mktemp("playlists")
    videos = root / "videos"
    secret = make_clip(root / "outside" / "secret.mp4", seconds=1.0)
    os.mkfifo(root / "outside" / "stalls.ts")
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\nfile:{}\n#EXT-X-ENDLIST\n"
    videos.mkdir()
    (videos / "hls.mp4").write_text(hls.format(secret))
    (videos / "hls_fifo.mp4").write_text(hls.format(root / "outside" / "stalls.ts"))
    (videos / "list.mp4").write_text(f"ffconcat version 1.0\nfile {secret}\n")
    (videos / "stream.mkv").write_text("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\n"
                                       "c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x48", "-frames:v", "1", str(root / "frame.png"))
    (videos / "image.mp4").write_bytes((root / "frame.png").read_bytes())
    return videos


@pytest.mark.parametrize("name, refused", [("hls.mp4", "hls"), ("hls_fifo.mp4", "hls"),
                                           ("list.mp4", "concat"), ("stream.mkv", "sdp"),
                                           ("image.mp4", "png_pipe")])
def test_playlists_and_image_sequences_are_refused(playlists, name, refused):
    began = time.monotonic()
    result = process_clip(_task(name), _ctx(playlists))
    assert result.status == fmt.STATUS_FAILED and result.members == ()
    assert result.reason.startswith(f"unsupported_format: ffprobe refused {refused}: accepted "
                                    f"are the media containers mov, matroska"), result.reason
    assert time.monotonic() - began < 4          # refused at once, not after the probe timeout
    # the decode is guarded on its own too (were a probe ever fooled)
    info = media.MediaInfo(duration=1.0, audio=media.AudioStream(0, 16000, 1), video=None)
    with pytest.raises(errors.ClipError) as error:
        media.decode_window(playlists / name, info, start=0.0, seconds=1.0, frame_indices=[],
                            want_audio=True, want_video=False, params=ClipParams(),
                            limits=MediaLimits(probe_timeout_s=5, decode_timeout_s=5))
    assert error.value.code == errors.UNSUPPORTED_FORMAT, error.value.reason


def test_supported_containers_still_decode(tmp_path):
    for name in ("a.mp4", "a.mkv", "a.webm", "a.avi", "a.flv", "a.ts", "a.mov"):
        extra = ("-c:v", "libvpx", "-c:a", "libvorbis") if name.endswith(".webm") else ()
        make_clip(tmp_path / name, seconds=0.5, extra=extra)
    for name in ("a.wav", "a.mp3", "a.flac", "a.ogg", "a.m4a", "a.aac"):
        make_clip(tmp_path / name, seconds=0.5, video=False,
                  extra=("-c:a", {"a.wav": "pcm_s16le", "a.mp3": "libmp3lame", "a.flac": "flac",
                                  "a.ogg": "libvorbis"}.get(name, "aac")))
    failed = {p.name: r.reason for p in sorted(tmp_path.iterdir())
              if (r := process_clip(_task(p.name), _ctx(tmp_path, keep_single_modality=True)))
              .status != fmt.STATUS_OK}
    assert not failed


def test_ids_and_paths_cannot_leave_videos_or_hold_nul(clips, tmp_path):
    inside = _ctx(clips)
    for candidate, reason in [("/etc/hostname", f"'/etc/hostname' would leave {clips}"),
                              ("../outside.mp4", f"'../outside.mp4' would leave {clips}"),
                              (str(clips.parent / "x.mp4"), "would leave"),
                              ("a\0b.mp4", "holds a NUL byte")]:
        result = process_clip(_task(candidate), inside)
        assert result.reason.startswith("unsafe_path: ") and reason in result.reason, result.reason
    absolute = process_clip(_task(str(clips / "ok.mp4")), inside)   # absolute, inside --videos
    assert absolute.status == fmt.STATUS_OK and absolute.path == "ok.mp4"
    anywhere = process_clip(_task(str(clips / "ok.mp4")), _ctx(Path("/")))   # --videos /
    assert anywhere.status == fmt.STATUS_OK


_READ_AS_NOBODY = """
import sys
from pipeline.clip import ClipContext, ClipTask, process_clip
from pipeline.params import ClipParams, MediaLimits
task = ClipTask(0, "k", "s", ("locked.mp4",), None, None, (), ())
print(process_clip(task, ClipContext(sys.argv[1], ClipParams(), MediaLimits(), "h")).reason)
"""


def test_a_file_without_read_permission_is_unreadable_file(clips):
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="avsiam-perm-"))
    try:
        folder.chmod(0o755)
        shutil.copy(clips / "ok.mp4", folder / "locked.mp4")
        (folder / "locked.mp4").chmod(0)
        command = [os.sys.executable, "-c", _READ_AS_NOBODY, str(folder)]
        if os.geteuid() == 0:        # root reads anything: check as an unprivileged user
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1],
                                capture_output=True, text=True, timeout=120)
        assert result.stdout.startswith(f"unreadable_file: {folder / 'locked.mp4'}: Permission "
                                        f"denied"), result.stdout + result.stderr
    finally:
        shutil.rmtree(folder)
