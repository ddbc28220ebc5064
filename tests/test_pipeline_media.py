"""One clip -> one sample, on real ffmpeg-made media: the CAV-MAE fbank and frame indices, the
window seek, and every kind of bad input (each row gets its status and a precise reason)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import wave

import numpy as np
import pytest
from PIL import Image

from pipeline.clip import ClipContext, ClipTask, process_clip
from pipeline.params import FBANK_ARGS, ClipParams, MediaLimits
from shards import format as fmt
from fixtures import ffmpeg, make_clip

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    make_clip(d / "ok.mp4", seconds=2.0, size=(96, 64))
    # frame n has luma 16 + 4n, so a stored frame tells which source frame it was
    make_clip(d / "index.mp4", seconds=2.0,
              video_source="nullsrc=s=64x48:r=25,geq=lum='16+4*N':cb=128:cr=128",
              extra=("-qp", "0"))
    make_clip(d / "video_only.mp4", audio=False)
    make_clip(d / "audio_only.wav", video=False)
    make_clip(d / "stereo44k.mp4", rate=44100, channels=2)
    make_clip(d / "odd.mp4", video_source="testsrc=s=321x239:r=25", extra=("-pix_fmt", "yuv444p"))
    ffmpeg("-i", str(make_clip(d / "plain.mp4", size=(96, 64))), "-c", "copy",
           "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4"))
    make_clip(d / "vfr.mp4", seconds=2.0,
              extra=("-vf", "setpts='if(lt(N,25),N/25,1+(N-25)/10)/TB'", "-fps_mode", "vfr"))
    make_clip(d / "mkv_full.mkv", seconds=2.0)
    data = (d / "mkv_full.mkv").read_bytes()
    (d / "truncated.mkv").write_bytes(data[: len(data) // 2])
    data = (d / "ok.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])   # moov atom at the end: gone
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    (d / "folder.mp4").mkdir()
    os.mkfifo(d / "fifo.mp4")
    return d


def run(media, name, start=None, end=None, **params):
    ctx = ClipContext(str(media), ClipParams(**{"num_frames": 4, "frame_size": SIZE, **params}),
                      MediaLimits(probe_timeout_s=10, decode_timeout_s=20), "hash")
    task = ClipTask(row=0, key="k", source_id=name, candidates=(name,), start=start, end=end,
                    labels=("a",), label_indices=(0,))
    return process_clip(task, ctx)


def meta_of(result):
    return json.loads(dict(result.members)["json"])


def test_fbank_is_cav_mae_kaldi_fbank_of_the_16k_mono_window(media):
    """Stored fbank == kaldi.fbank(CAV-MAE args) of the window's audio decoded by a separate
    ffmpeg run (16 kHz, -ac 1), as float16, unpadded."""
    import torch
    from torchaudio.compliance import kaldi

    result = run(media, "stereo44k.mp4", start=0.25, end=0.75, segments="full")
    assert result.status == "ok", result.reason
    stored = np.load(io.BytesIO(dict(result.members)["fbank.npy"]))
    wav = media / "ref.wav"
    ffmpeg("-ss", "0.25", "-t", "0.5", "-i", str(media / "stereo44k.mp4"), "-vn", "-ac", "1",
           "-ar", "16000", "-c:a", "pcm_s16le", str(wav))
    with wave.open(str(wav)) as handle:
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), "<i2")
    waveform = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]
    expected = kaldi.fbank(waveform - waveform.mean(), **FBANK_ARGS).numpy().astype(np.float16)
    assert FBANK_ARGS["num_mel_bins"] == 128 and FBANK_ARGS["window_type"] == "hanning"
    assert stored.dtype == np.float16 and stored.shape == expected.shape == (48, 128)
    np.testing.assert_array_equal(stored, expected)
    meta = meta_of(result)
    assert meta["fbank_frames"] == 48
    assert (meta["audio_rate"], meta["audio_channels"]) == (44100, 2)


def _source_frame(jpeg: bytes) -> int:
    gray = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float64).mean()
    return int(round(gray / (4 * 255 / 219)))


def test_frames_at_cav_mae_indices_of_the_window(media):
    whole = run(media, "index.mp4")
    members = dict(whole.members)
    assert [s for s, _ in whole.members] == ["fbank.npy", "f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg",
                                             "json"]
    # total = min(50 frames, 25 fps * 2 s) = 50, N = 4 -> int(i * 50 / 4) = 0, 12, 25, 37
    assert [_source_frame(members[f"f{i}.jpg"]) for i in range(4)] == [0, 12, 25, 37]
    image = Image.open(io.BytesIO(members["f0.jpg"]))
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    window = run(media, "index.mp4", start=1.0, end=2.0, segments="full")  # 25 frames from 25
    frames = dict(window.members)
    assert [_source_frame(frames[f"f{i}.jpg"]) for i in range(4)] == [25, 31, 37, 43]
    assert meta_of(window)["fbank_frames"] == 98 and meta_of(window)["start"] == 1.0


def test_clip_shorter_than_window_keeps_what_exists_above_min_coverage(media):
    result = run(media, "ok.mp4", start=0.0, end=10.0, min_coverage=0.2)
    assert result.status == "ok", result.reason
    meta = meta_of(result)
    # 2 s of AAC (plus encoder padding), not padded to the 10 s window
    assert 195 <= meta["fbank_frames"] <= 210 and meta["end"] == 10.0 and meta["duration"] == 2.0
    assert meta["num_frames"] == 4
    assert meta["window_source"] == "cut" and 0.2 <= meta["coverage"] == result.coverage < 0.21
    short = run(media, "ok.mp4", start=0.0, end=10.0)          # default --min-coverage 0.5
    assert short.status == "failed" and short.reason.startswith(
        "short_window: ok.mp4 holds 2.00 s of the 10-s window [0, 10] s"), short.reason
    assert "coverage 0.20 < --min-coverage 0.5" in short.reason and short.coverage == 0.2


@pytest.mark.parametrize("name, code, detail", [
    ("missing.mp4", "missing_file", "none of missing.mp4 under"),
    ("empty.mp4", "empty_file", "has 0 bytes"),
    ("truncated.mp4", "truncated_file", "moov atom not found"),
    ("corrupt.mp4", "probe_failed", "Invalid data found"),
    ("text.mp4", "probe_failed", "Invalid data found"),
    ("folder.mp4", "not_regular_file", "is a directory"),
    ("fifo.mp4", "not_regular_file", "is a FIFO"),
    ("video_only.mp4", "no_audio_stream", "video_only.mp4 has no audio stream"),
    ("audio_only.wav", "no_video_stream", "audio_only.wav has no video stream"),
])
def test_bad_input_fails_with_precise_reason(media, name, code, detail):
    result = run(media, name)
    assert result.status == fmt.STATUS_FAILED and result.members == ()
    assert result.reason.startswith(code + ": ") and detail in result.reason, result.reason


def test_window_outside_file_and_bad_window(media):
    outside = run(media, "ok.mp4", start=5.0, end=6.0, segments="full")
    assert outside.reason == ("window_outside_file: window starts at 5 s but the file lasts "
                              "2.000 s (ok.mp4; if the files are already cut to their segments, "
                              "pass --segments cut (or auto))")
    assert (outside.window_source, outside.coverage) == ("seek", 0.0)
    assert run(media, "ok.mp4", start=5.0, end=6.0).status == "ok"    # auto: 2 s file ~ 1-s window
    assert run(media, "ok.mp4", start=1.0, end=1.0).reason.startswith("bad_window:")


def test_single_modality_kept_only_with_the_flag(media):
    audio = run(media, "audio_only.wav", keep_single_modality=True)
    assert audio.status == "ok" and (audio.has_audio, audio.has_video) == (True, False)
    assert [s for s, _ in audio.members] == fmt.member_suffixes(4, True, False)
    video = run(media, "video_only.mp4", keep_single_modality=True)
    assert video.status == "ok" and (video.has_audio, video.has_video) == (False, True)
    assert [s for s, _ in video.members] == fmt.member_suffixes(4, False, True)
    meta = meta_of(video)
    assert meta["has_audio"] is False and meta["fbank_frames"] == 0 and meta["audio_rate"] is None


@pytest.mark.parametrize("name, width, height", [
    ("odd.mp4", 321, 239), ("rotated.mp4", 64, 96), ("vfr.mp4", 96, 64), ("stereo44k.mp4", 96, 64)])
def test_odd_rotated_vfr_and_resampled_clips_decode(media, name, width, height):
    result = run(media, name)
    assert result.status == "ok", result.reason
    meta = meta_of(result)
    assert (meta["width"], meta["height"]) == (width, height)
    for i in range(4):
        assert Image.open(io.BytesIO(dict(result.members)[f"f{i}.jpg"])).size == (SIZE, SIZE)


def test_rotated_video_is_autorotated_before_the_crop(media):
    """The rotated clip's stored frame equals the plain clip's frame turned by 90 degrees."""
    plain = run(media, "plain.mp4", num_frames=1)
    rotated = run(media, "rotated.mp4", num_frames=1)
    a = np.asarray(Image.open(io.BytesIO(dict(plain.members)["f0.jpg"])), dtype=np.float64)
    b = np.asarray(Image.open(io.BytesIO(dict(rotated.members)["f0.jpg"])), dtype=np.float64)
    turned = min(np.abs(np.rot90(a, k) - b).mean() for k in (1, 3))
    assert turned < np.abs(a - b).mean() / 2


def test_truncated_matroska_file_is_truncated_file(media):
    """A cut-off Matroska file (its header claims 2 s) decodes only what is left: recorded as
    truncated_file, not stored as a shorter sample."""
    result = run(media, "truncated.mkv")
    assert result.status == "failed" and result.reason.startswith(
        "truncated_file: truncated.mkv claims 2.000 s of audio"), result.reason
    assert "download it again" in result.reason


def test_ffmpeg_made_fixtures_are_real_media(media):
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                            "-of", "csv=p=0", str(media / "ok.mp4")], capture_output=True,
                           text=True, check=True)
    assert probe.stdout.split() == ["h264", "aac"]
