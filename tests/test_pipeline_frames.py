"""Which frames are stored: the decoded frame nearest each CAV-MAE index (non-reference frames
skipped where the indices are far apart), its true presentation time in `frame_times`, and the
`--frame-crop` / `--frame-sampling` options end to end."""
from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from cluster.cli import main as cli
from pipeline import frame_select, frames as frames_mod, media
from pipeline.clip import ClipContext, ClipTask, process_clip
from pipeline.params import ClipParams, MediaLimits
from shards import format as fmt
from fixtures import ffmpeg

FPS = 25
RAMP = "nullsrc=s=64x48:r=25,geq=lum='16+4*N':cb=128:cr=128"   # frame n has luma 16 + 4n


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    audio = ("-f", "lavfi", "-t", "2", "-i", "sine=f=440:r=16000")
    x264 = ("-c:v", "libx264", "-preset", "medium", "-bf", "3", "-g", "90", "-pix_fmt", "yuv420p",
            "-c:a", "aac")
    # x264's default B-pyramid: every second B-frame is a reference, the others are not
    ffmpeg("-f", "lavfi", "-t", "2", "-i", RAMP, *audio, *x264, str(d / "pyramid.mp4"))
    # no pyramid: runs of 3 non-reference B-frames, the middle one 2 frames from any reference
    ffmpeg("-f", "lavfi", "-t", "2", "-i", RAMP, *audio, *x264, "-b-pyramid", "none",
           str(d / "flat.mp4"))
    # HEVC (x265 defaults: 4 B-frames, B-pyramid)
    ffmpeg("-f", "lavfi", "-t", "2", "-i", RAMP, *audio, "-c:v", "libx265", "-x265-params",
           "log-level=error", "-pix_fmt", "yuv420p", "-c:a", "aac", str(d / "hevc.mp4"))
    # variable rate: 25 frames at 25 fps, then 10 fps
    ffmpeg("-f", "lavfi", "-t", "2", "-i", RAMP, *audio, *x264, "-vf",
           "setpts='if(lt(N,25),N/25,1+(N-25)/10)/TB'", "-fps_mode", "vfr", str(d / "vfr.mp4"))
    # a gap: frames 0..40 at n / 25 (to 1.6 s), then from 1.96 s on
    ffmpeg("-f", "lavfi", "-t", "2", "-i", RAMP, *audio, *x264, "-vf",
           "setpts='if(lt(N,41),N,N+8)/25/TB'", "-fps_mode", "vfr", str(d / "gap.mp4"))
    ffmpeg("-f", "lavfi", "-t", "2", "-i", "nullsrc=s=128x64:r=25,geq=lum='16+200*X/W':cb=128:cr=128",
           *audio, *x264, str(d / "bars.mp4"))
    return d


def _pict_types(path) -> str:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "frame=pict_type", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return "".join(line[0] for line in out.split())


def _source_times(path) -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "frame=pts_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return sorted(float(x.split(",")[0]) for x in out.split() if x.split(",")[0])


def _run(folder, name, num_frames=10, start=None, end=None, **params):
    ctx = ClipContext(str(folder), ClipParams(num_frames=num_frames, frame_size=32, **params),
                      MediaLimits(probe_timeout_s=10, decode_timeout_s=20), "hash")
    task = ClipTask(row=0, key="k", source_id=name, candidates=(name,), start=start, end=end,
                    labels=("a",), label_indices=(0,))
    result = process_clip(task, ctx)
    assert result.status == fmt.STATUS_OK, result.reason
    members = dict(result.members)
    lumas = [np.asarray(Image.open(io.BytesIO(members[f"f{i}.jpg"])).convert("L"),
                        dtype=np.float64).mean() for i in range(num_frames)]
    source = [int(round(luma / (4 * 255 / 219))) for luma in lumas]
    return json.loads(members["json"]), source


def test_fixtures_have_non_reference_b_frames(clips):
    for name in ("pyramid.mp4", "flat.mp4", "hevc.mp4"):
        assert _pict_types(clips / name).count("BBB") >= 10, name


@pytest.mark.parametrize("name", ["pyramid.mp4", "flat.mp4", "hevc.mp4"])
def test_stored_frames_within_one_period_of_the_cav_mae_index(clips, name):
    meta, source = _run(clips, name)
    wanted = frames_mod.frame_indices(50, 10)                    # 0, 5, ..., 45
    assert all(abs(s - w) <= 1 for s, w in zip(source, wanted)), (source, wanted)
    # frame_times are the stored frames' true presentation times (frame n is shown at n / 25)
    assert [round(t * FPS, 3) for t in meta["frame_times"]] == source
    assert len(set(source)) == 10                                 # distinct on moving content


def test_non_reference_frames_are_skipped_only_for_far_apart_indices(clips):
    info = media.probe(clips / "pyramid.mp4", ClipParams(), MediaLimits())
    assert frame_select.may_skip([0, 5, 10]) and not frame_select.may_skip([0, 3, 10])

    def command(indices):
        one = media.DecodeRequest(clips / "pyramid.mp4", info, 0.0, 2.0, indices,
                                  want_audio=False).first_pass()
        urls = {name: f"pipe:{3 + i}" for i, name in enumerate(one.outputs(1))}
        return media.decode_command([one], ClipParams(), MediaLimits(), [urls])
    assert "-skip_frame:v" in command((0, 5)) and "-skip_frame:v" not in command((0, 3))
    # the pyramid clip is stored from reference frames only: some stored frame is off its index
    _, source = _run(clips, "pyramid.mp4")
    assert source != frames_mod.frame_indices(50, 10)
    # dense indices (1 s at 25 fps, 10 frames: 2-3 apart) decode every frame: exact indices
    meta, dense = _run(clips, "pyramid.mp4", start=0.0, end=1.0, segments="cut")
    assert dense == frames_mod.frame_indices(25, 10)
    assert len(set(dense)) == 10


def test_variable_frame_rate_stores_the_nearest_frames(clips):
    meta, source = _run(clips, "vfr.mp4")
    times = _source_times(clips / "vfr.mp4")
    fps = meta["fps"]
    period = 1.0 / fps
    for t, stored, i in zip(meta["frame_times"], source,
                            frames_mod.frame_indices(
                                frames_mod.frame_total(fps, meta["duration"], len(times)), 10)):
        nearest = min(times, key=lambda x: abs(x - i / fps))
        assert min(abs(t - x) for x in times) < 1e-6           # a real frame's time
        assert abs(t - nearest) <= period * 1.01, (t, nearest)
        assert stored == (round(t * 25) if t < 1 else 25 + round((t - 1) * 10))
    assert meta["frame_times"] == sorted(meta["frame_times"])


def test_frame_times_monotonic_and_within_a_seeked_window(clips):
    meta, source = _run(clips, "pyramid.mp4", num_frames=4, start=0.4, end=1.8, segments="full")
    times = meta["frame_times"]
    assert times == sorted(times) and len(set(times)) == 4
    assert 0.0 <= times[0] and times[-1] < 1.4
    # window-relative: frame n of the file is at n / 25 - 0.4
    assert [round((t + 0.4) * FPS, 3) for t in times] == source


def _shard(videos, out, *extra):
    return cli(["shard", "--videos", str(videos), "--out", str(out), "--workers", "1",
                "--no-progress", "--frame-size", "32", "--num-frames", "4", *extra])


def _frames_of(out):
    import webdataset as wds

    samples = list(wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False).decode("pil"))
    return {s["__key__"]: s for s in samples}


def test_frame_crop_and_sampling_end_to_end(clips, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("pyramid.mp4", "bars.mp4"):
        (videos / name).write_bytes((clips / name).read_bytes())
    plain, other = tmp_path / "plain", tmp_path / "other"
    assert _shard(videos, plain) == 0
    assert _shard(videos, other, "--frame-crop", "squash", "--frame-sampling", "avsiam") == 0
    params = json.loads((other / fmt.DATASET_JSON).read_text())["params"]
    assert (params["frame_crop"], params["frame_sampling"]) == ("squash", "avsiam")
    defaults = json.loads((plain / fmt.DATASET_JSON).read_text())["params"]
    assert (defaults["frame_crop"], defaults["frame_sampling"]) == ("center", "cavmae")

    a, b = _frames_of(plain), _frames_of(other)
    # squash keeps the whole width (left edge dark), centre crop starts a quarter in
    left = {k: np.asarray(s["f0.jpg"].convert("L"), dtype=np.float64)[:, :3].mean()
            for k, s in (("center", a["bars"]), ("squash", b["bars"]))}
    assert left["squash"] < 40 < left["center"], left
    # AVSiam's linspace ends at the last frame; CAV-MAE's at int(3 * 50 / 4) = 37
    cavmae = a["pyramid"]["json"]["frame_times"]
    avsiam = b["pyramid"]["json"]["frame_times"]
    wanted = frames_mod.frame_indices(50, 4, "avsiam", b["pyramid"]["json"]["key"])
    assert wanted[-1] == 49 and 0 <= wanted[0] <= 4
    assert all(abs(t * FPS - w) <= 1 for t, w in zip(avsiam, wanted)), (avsiam, wanted)
    assert abs(cavmae[-1] * FPS - 37) <= 1

    capsys.readouterr()
    assert _shard(videos, other, "--frame-crop", "center", "--frame-sampling", "avsiam") == 2
    error = capsys.readouterr().err
    assert "frame_crop: 'squash' -> 'center'" in error and error.count("\n") == 1
    assert _shard(videos, other, "--frame-crop", "squash") == 2
    assert "frame_sampling: 'avsiam' -> 'cavmae'" in capsys.readouterr().err


def test_avsiam_offsets_are_fixed_per_key_and_cover_0_to_4():
    offsets = {frames_mod.avsiam_offset(f"clip{i}") for i in range(200)}
    assert offsets == {0, 1, 2, 3, 4}
    assert frames_mod.frame_indices(250, 10, "avsiam", "x") == \
        frames_mod.frame_indices(250, 10, "avsiam", "x")
    first = frames_mod.avsiam_offset("x")
    assert frames_mod.frame_indices(250, 10, "avsiam", "x") == \
        [int(v) for v in np.linspace(first, 249, 10)]


@pytest.mark.parametrize("skip", [False, True])
def test_select_passes_the_nearest_frame_and_at_most_two_per_target(clips, skip):
    """The select expression alone, in ffmpeg: every target's nearest decoded frame is among the
    frames it passes, and no more than two per target are scaled and written."""
    targets = frame_select.targets([0, 5, 10, 22, 37, 49], FPS)
    command = ["ffmpeg", "-v", "error", "-nostdin", *(["-skip_frame:v", "noref"] if skip else []),
               "-i", str(clips / "pyramid.mp4"), "-map", "0:v",
               "-vf", f"select='{frame_select.expression(targets, 1 / FPS)}'",
               "-vsync", "passthrough", "-enc_time_base", "-1", "-f", "framecrc", "-"]
    passed = frame_select.parse_framecrc(subprocess.run(command, capture_output=True, text=True,
                                                        check=True).stdout)
    every = ["ffmpeg", "-v", "error", "-nostdin", *(["-skip_frame:v", "noref"] if skip else []),
             "-i", str(clips / "pyramid.mp4"), "-map", "0:v", "-vsync", "passthrough",
             "-enc_time_base", "-1", "-f", "framecrc", "-"]
    decoded = frame_select.parse_framecrc(subprocess.run(every, capture_output=True, text=True,
                                                         check=True).stdout)
    assert len(decoded) < 40 if skip else len(decoded) == 50      # noref: about half skipped
    best = [decoded[j] for j in frame_select.pick(targets, decoded, 1 / FPS)[0]]
    assert set(best) <= set(passed)
    assert len(passed) <= 2 * len(targets)
    assert [passed[j] for j in frame_select.pick(targets, passed, 1 / FPS)[0]] == best


@pytest.mark.parametrize("name", ["pyramid.mp4", "vfr.mp4", "gap.mp4"])
def test_video_stops_after_the_last_target_with_the_same_frames(clips, name, monkeypatch):
    """With audio, the video is decoded only to just past the last target (the audio, opened on
    its own, reads the window to its end): the frames and times are those of decoding the whole
    window. Where the stream has a gap at the last target (gap.mp4: nothing from 1.6 s to 1.96
    s), the frame after the gap lies beyond the cut, so the video is decoded again in full."""
    params, limits = ClipParams(frame_size=32), MediaLimits()
    info = media.probe(clips / name, params, limits)
    last = round(1.8 * info.video.fps)
    indices = (0, 8, 16, 24, last)
    runs = []
    real = media._run_passes
    monkeypatch.setattr(media, "_run_passes", lambda passes, *a: runs.append(passes) or
                        real(passes, *a))

    def decode(audio):
        runs.clear()
        request = media.DecodeRequest(clips / name, info, 0.0, 2.0, indices, want_audio=audio)
        return media.decode_windows([request], params, limits)[0], list(runs)

    (cut, cut_runs), (whole, whole_runs) = decode(True), decode(False)
    assert cut_runs[0][0].cut and not whole_runs[0][0].cut
    assert cut_runs[0][0].video_seconds < 2.0 - 1 / info.video.fps
    assert cut.frame_times == whole.frame_times and cut.frames == whole.frames
    assert len(cut.frames) == len(indices) and len(cut.audio) == 2 * 16000 * 2
    times = _source_times(clips / name)
    gap = min(abs(t - last / info.video.fps) for t in times) > frame_select.REACH / info.video.fps
    assert gap == (name == "gap.mp4")
    assert len(cut_runs) == (2 if gap else 1)        # the second run: video only, no cut
    if gap:
        assert not cut_runs[1][0].audio and not cut_runs[1][0].cut
