"""`avsiam synth`: deterministic, decodable clips with a learnable audio-visual class structure, and
metadata in the AudioSet / VGGSound formats (reference avsiam.md section 7)."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cluster import cli
from pipeline.synth import EncodeError, SynthConfig, SynthConfigError, make_classes, write_dataset
from pipeline.synth.config import parse_size
from pipeline.synth.encode import encode_clip, run_encoder
from pipeline.synth.plan import make_plan, clip_rng
from pipeline.synth.scene import make_scene
from pipeline.synth.video import render_frames, rgb_to_yuv420p

pytestmark = pytest.mark.e2e

SECONDS, FPS, SIZE = 1.0, 10, (128, 96)
BASE = dict(clips=9, classes=4, seed=3, seconds=SECONDS, size=SIZE, fps=FPS,
            formats=("mp4", "webm", "mkv"), multi_label_fraction=0.25, test_fraction=0.25)
YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _probe(path: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_streams",
                          "-show_format", "-of", "json", path],
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def _segments(path: str) -> tuple[list[str], list[list[str]]]:
    """Parse an AudioSet segments CSV the way users do: '#' lines, then skipinitialspace."""
    lines = Path(path).read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(csv.reader([line for line in lines if not line.startswith("#")],
                           skipinitialspace=True))
    return comments, rows


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The same dataset made twice: with two workers, and again with one."""
    root = tmp_path_factory.mktemp("synth")
    first = write_dataset(SynthConfig(out=root / "a", workers=2, **BASE), progress=False)
    second = write_dataset(SynthConfig(out=root / "b", workers=1, **BASE), progress=False)
    return root, first, second


def test_same_seed_same_bytes_whatever_the_workers(made):
    root, first, _ = made
    a, b = _hashes(root / "a"), _hashes(root / "b")
    assert len(a) == BASE["clips"] + 5  # clips, four CSVs, synth.json; no temporaries left
    assert a == b


def test_another_seed_gives_other_clips(made, tmp_path):
    root, first, _ = made
    other = write_dataset(SynthConfig(out=tmp_path, workers=2, **{**BASE, "seed": 4, "clips": 2}),
                          progress=False)
    assert {c["ytid"] for c in other["clips"]}.isdisjoint(c["ytid"] for c in first["clips"])
    mine = {hashlib.sha256(Path(c["path"]).read_bytes()).digest() for c in first["clips"]}
    assert all(hashlib.sha256(Path(c["path"]).read_bytes()).digest() not in mine
               for c in other["clips"])


def test_summary_layout(made):
    root, summary, _ = made
    out = root / "a"
    assert summary["videos_dir"] == str(out / "videos")
    assert summary["balanced_train_csv"] == str(out / "balanced_train_segments.csv")
    assert summary["eval_csv"] == str(out / "eval_segments.csv")
    assert summary["labels_csv"] == str(out / "class_labels_indices.csv")
    assert summary["vggsound_csv"] == str(out / "vggsound.csv")
    for i, clip in enumerate(summary["clips"]):
        fmt = BASE["formats"][i % len(BASE["formats"])]
        assert clip["path"] == str(out / "videos" / f"{clip['ytid']}.{fmt}")
        assert Path(clip["path"]).is_file()
        assert clip["split"] in ("train", "test")
    meta = json.loads((out / "synth.json").read_text())
    assert meta["parameters"]["seed"] == BASE["seed"]
    assert (meta["clips"], meta["classes"]) == (BASE["clips"], BASE["classes"])
    assert [c["mid"] for c in meta["class_recipes"]] == [c.mid for c in make_classes(BASE["classes"])]


@pytest.mark.parametrize("fmt,video,audio,rate", [("mp4", "h264", "aac", 44100),
                                                  ("webm", "vp9", "opus", 48000),
                                                  ("mkv", "h264", "aac", 44100)])
def test_clips_decode_with_one_video_and_one_audio_stream(made, fmt, video, audio, rate):
    _, summary, _ = made
    clips = [c for c in summary["clips"] if c["path"].endswith("." + fmt)]
    assert clips
    for clip in clips:
        info = _probe(clip["path"])
        kinds = sorted(s["codec_type"] for s in info["streams"])
        assert kinds == ["audio", "video"], clip["path"]
        v = next(s for s in info["streams"] if s["codec_type"] == "video")
        a = next(s for s in info["streams"] if s["codec_type"] == "audio")
        assert (v["codec_name"], a["codec_name"]) == (video, audio)
        assert (v["width"], v["height"]) == SIZE
        assert int(v["nb_read_packets"]) == round(SECONDS * FPS)
        assert int(a["sample_rate"]) == rate and int(a["channels"]) == 2
        assert abs(float(info["format"]["duration"]) - SECONDS) <= 1.0 / FPS


def test_audioset_segments_csvs(made):
    _, summary, _ = made
    mids = {c.mid for c in make_classes(BASE["classes"])}
    seen = {}
    for key, split in (("balanced_train_csv", "train"), ("eval_csv", "test")):
        comments, rows = _segments(summary[key])
        assert len(comments) == 3
        assert comments[2] == "# YTID, start_seconds, end_seconds, positive_labels"
        assert f"num_ytids={len(rows)}" in comments[1]
        for ytid, start, end, labels in rows:
            assert YTID_RE.match(ytid)
            assert (start, float(end)) == ("0.000", SECONDS)
            assert set(labels.split(",")) <= mids
            seen[ytid] = (split, labels.split(","))
        text = Path(summary[key]).read_text()
        assert all(', "' in line for line in text.splitlines()[3:])  # comma+space, quoted labels
    assert seen == {c["ytid"]: (c["split"], c["labels"]) for c in summary["clips"]}


def test_class_labels_and_vggsound_csvs(made):
    _, summary, _ = made
    with open(summary["labels_csv"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "mid", "display_name"]
    classes = make_classes(BASE["classes"])
    assert rows[1:] == [[str(c.index), c.mid, c.display_name] for c in classes]
    assert all(c.mid.startswith("/m/0") for c in classes)
    names = {c.mid: c.display_name for c in classes}
    with open(summary["vggsound_csv"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [[c["ytid"], "0", names[c["labels"][0]], c["split"]] for c in summary["clips"]]
    assert any("," in row[2] for row in rows)  # quoted labels with commas are exercised


def test_multi_label_clips_and_split(made):
    _, summary, _ = made
    clips = summary["clips"]
    two = [c for c in clips if len(c["labels"]) == 2]
    assert len(two) == round(BASE["clips"] * BASE["multi_label_fraction"])
    assert all(c["labels"][0] != c["labels"][1] for c in two)
    assert all(len(c["labels"]) in (1, 2) for c in clips)
    assert {c["split"] for c in clips} == {"train", "test"}


def test_ytids_look_like_youtube_ids():
    plans = make_plan(SynthConfig(out="unused", clips=400, classes=5, seed=0))
    ids = [p.ytid for p in plans]
    assert all(YTID_RE.match(i) for i in ids)
    assert len({i.lower() for i in ids}) == len(ids)
    assert any(i.startswith("--") for i in ids) and any(re.match("^-[^-]", i) for i in ids)
    counts = np.bincount([p.labels[0] for p in plans])
    assert counts.min() == counts.max() == 80  # balanced primary classes
    test = [p for p in plans if p.split == "test"]
    assert len(test) == 80 and np.bincount([p.labels[0] for p in test]).tolist() == [16] * 5


def test_classes_are_distinct_and_stable():
    many = make_classes(40)
    assert make_classes(4) == many[:4]  # class k does not depend on the number of classes
    attrs = [(c.shape, c.texture, c.colour, c.motion, c.timbre, c.pattern, c.pulse_hz, c.register)
             for c in many]
    assert min(sum(x != y for x, y in zip(a, b)) for a, b in itertools.combinations(attrs, 2)) >= 5
    assert len({c.display_name for c in many}) == 40 and len({c.mid for c in many}) == 40


def test_audio_pitch_follows_the_class(made):
    """Decoded sound of single-label clips peaks in the class's register (+-3 semitones offset,
    plus up to 7 semitones of pattern)."""
    _, summary, _ = made
    by_mid = {c.mid: c for c in make_classes(BASE["classes"])}
    checked = 0
    for clip in summary["clips"]:
        if len(clip["labels"]) != 1:
            continue
        pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", clip["path"], "-ac", "1", "-ar", "16000",
                              "-f", "f32le", "-"], capture_output=True, check=True, timeout=60).stdout
        audio = np.frombuffer(pcm, np.float32)
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        peak_hz = np.argmax(spectrum[10:]) + 10
        peak_hz *= 16000 / len(audio)
        recipe = by_mid[clip["labels"][0]]
        band = 2.5 if recipe.timbre == "hiss" else 0.5  # band noise peaks anywhere in its band
        low, high = recipe.base_hz * 2 ** ((-3 - band) / 12), recipe.base_hz * 2 ** ((10 + band) / 12)
        assert low <= peak_hz <= high, (clip, recipe.timbre, peak_hz)
        checked += 1
    assert checked >= 3


def test_objects_take_their_class_colour_and_vary_within_the_class():
    classes = make_classes(6)
    rendered = []
    for index in (0, 1):  # two clips of each class: same colour, different scene
        for recipe in classes:
            scene = make_scene([recipe], clip_rng(7, index * 10 + recipe.index), width=128, height=96,
                               fps=10, num_frames=3, seconds=0.3)
            frame = next(render_frames(scene))[0]
            luma = frame[:128 * 96].reshape(96, 128)
            background = rgb_to_yuv420p(scene.background)[0]
            assert (luma != background).mean() > 0.005  # the object is drawn
            chroma = frame[128 * 96:].reshape(2, 48, 64).astype(float) - 128
            bg_chroma = np.stack(rgb_to_yuv420p(scene.background)[1:]).astype(float) - 128
            changed = np.abs(chroma - bg_chroma).sum(0) > 8
            u, v = chroma[0][changed].mean(), chroma[1][changed].mean()
            expected = np.stack(rgb_to_yuv420p(np.full((2, 2, 3), recipe.rgb, np.uint8))[1:])
            eu, ev = expected.reshape(2).astype(float) - 128
            assert np.dot([u, v], [eu, ev]) / (np.hypot(u, v) * np.hypot(eu, ev)) > 0.9, recipe
            rendered.append(frame)
    for a, b in zip(rendered[:6], rendered[6:]):
        assert not np.array_equal(a, b)


def _cli_args(config: dict, out: Path) -> list[str]:
    width, height = config["size"]
    return ["synth", "--out", str(out), "--clips", str(config["clips"]),
            "--classes", str(config["classes"]), "--seed", str(config["seed"]),
            "--seconds", str(config["seconds"]), "--size", f"{width}x{height}",
            "--fps", str(config["fps"]), "--formats", ",".join(config["formats"]),
            "--multi-label-fraction", str(config["multi_label_fraction"]),
            "--test-fraction", str(config["test_fraction"])]


def _videos(out: Path) -> list[Path]:
    """Complete clips (temporaries are hidden files)."""
    return [p for p in out.glob("videos/*") if not p.name.startswith(".")]


def test_killed_run_resumes_to_the_same_bytes(made, tmp_path):
    root, _, _ = made
    out = tmp_path / "resume"
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *_cli_args(BASE, out),
                             "--workers", "2"], start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _videos(out) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "synth.json").exists(), "the run finished before it could be interrupted"
    (out / "videos" / ".someid.mp4.partial").write_bytes(b"half a file")
    (out / "videos" / ".someid.wav").write_bytes(b"RIFF")
    before = len(_videos(out))
    assert before >= 1
    again = write_dataset(SynthConfig(out=out, workers=1, **BASE), progress=False)
    assert again["made"] == BASE["clips"] - before and again["reused"] == before
    assert _hashes(out) == _hashes(root / "a")
    with pytest.raises(SynthConfigError, match="another --out"):
        write_dataset(SynthConfig(out=out, workers=1, **{**BASE, "seed": 9}), progress=False)


def test_lost_clip_is_remade(made, tmp_path):
    root, first, _ = made
    out = tmp_path / "lost"
    shutil.copytree(root / "a", out)
    victim = out / "videos" / Path(first["clips"][4]["path"]).name
    victim.unlink()
    again = write_dataset(SynthConfig(out=out, workers=1, **BASE), progress=False)
    assert (again["made"], again["reused"]) == (1, BASE["clips"] - 1)
    assert _hashes(out) == _hashes(root / "a")


@pytest.mark.parametrize("changes,message", [
    ({"clips": 0}, "clips must be"), ({"classes": 0}, "classes must be"),
    ({"formats": ("mp4", "avi")}, "unknown format"), ({"size": (321, 240)}, "size must be"),
    ({"size": "320by240"}, "bad --size"), ({"seconds": 0}, "seconds must be"),
    ({"test_fraction": 1.5}, "test_fraction"), ({"workers": 0}, "workers must be"),
])
def test_invalid_parameters_are_named(changes, message):
    with pytest.raises(SynthConfigError, match=message):
        SynthConfig(**{**dict(out="x", clips=2, classes=2), **changes})


def test_parse_size():
    assert parse_size("320x240") == (320, 240)
    with pytest.raises(SynthConfigError, match="WIDTHxHEIGHT"):
        parse_size("320")


def test_cli_makes_a_dataset_and_rejects_bad_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["synth", "--out", str(out), "--clips", "4", "--classes", "2", "--seed", "1",
                     "--seconds", "0.5", "--size", "64x48", "--formats", "mp4", "--fps", "10",
                     "--workers", "1", "--multi-label-fraction", "0", "--test-fraction", "0.5"])
    printed = capsys.readouterr().out
    assert code == 0 and "4 clips" in printed and "2 train / 2 test" in printed
    assert len(list((out / "videos").glob("*.mp4"))) == 4
    for argv, message in ((["--size", "64"], "bad --size"), (["--formats", "mp4,flv"], "unknown format"),
                          (["--clips", "0"], "clips must be")):
        args = ["synth", "--out", str(tmp_path / "bad"), "--clips", "2", "--classes", "2", *argv]
        assert cli.main(args) == 2
        assert message in capsys.readouterr().err


def test_encoder_failures_name_the_file(tmp_path):
    wav = tmp_path / "missing.wav"
    target = tmp_path / "no_such_folder" / "clip.mp4"
    frames = [np.zeros((1, 64 * 48 * 3 // 2), np.uint8)]
    with pytest.raises(EncodeError, match="clip.mp4"):
        encode_clip(target, frames, wav, "mp4", width=64, height=48, fps=10, timeout_s=30)
    with pytest.raises(EncodeError, match="timed out"):
        run_encoder(["sleep", "30"], frames, target, timeout_s=0.5)
