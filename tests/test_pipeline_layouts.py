"""AudioSet and VGGSound as users hold them (issue 13): the published CSVs, full-length videos and
files already cut to their 10-s segment (`--segments auto|full|cut`), coverage, truncated
downloads, the pre-flight check, the exit code of a run without a sample, and re-runs that may not
change their inputs. Every ok sample's fbank is checked to be the fbank of its row's 10 s of the
source video, found by sliding it along an independent Kaldi fbank of the whole source."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.cli import main as cli
from pipeline.clip import ClipContext, ClipTask, process_clip
from pipeline.params import FBANK_ARGS, ClipParams, MediaLimits
from shards import format as fmt
from fixtures import (AUDIOSET_ROWS, VGGSOUND_ROWS, encode_youtube_like,
                                          published_dataset)

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]
SMALL = ("--frame-size", "32", "--num-frames", "2", "--no-progress")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return published_dataset(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def source_fbank(published):
    """Kaldi fbank (CAV-MAE arguments) of the whole source, decoded in one ffmpeg run, no seek."""
    import torch
    from torchaudio.compliance import kaldi

    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(published["source"]), "-vn", "-ac",
                          "1", "-ar", "16000", "-f", "s16le", "-"], capture_output=True,
                         check=True).stdout
    wave = torch.from_numpy(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0)[None]
    return kaldi.fbank(wave - wave.mean(), **FBANK_ARGS).numpy().astype(np.float16)


def where_in_source(stored: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(start in seconds, mean error) of the window of the source whose fbank `stored` is: the
    lag (10-ms frames) that fits best, comparing the louder bins (both floored at the source's
    75th percentile, so the codec's noise in near-silent bins does not count)."""
    floor = np.float32(np.percentile(reference, 75))
    ref = np.maximum(reference.astype(np.float32), floor)
    got = np.maximum(stored.astype(np.float32), floor)[::10]
    n = len(stored)
    errors = [np.abs(ref[lag:lag + n:10] - got).mean() for lag in range(len(ref) - n + 1)]
    lag = int(np.argmin(errors))
    return lag / 100, float(errors[lag])


def assert_window_of_source(stored, reference, start: float, *, exact: bool) -> None:
    """`stored` is the fbank of [start, start + 10] s of the source: the best lag is start (10 ms
    frames), 998 frames long; a seeked window equals the source's frames to fp16 precision (but
    the first frame, which the AAC decoder starts without its pre-roll)."""
    found, error = where_in_source(stored, reference)
    assert stored.shape == (998, 128) and stored.dtype == np.float16
    assert found == pytest.approx(start, abs=0.011), (found, start)
    assert error < 0.1, error                  # a window 50 ms off gives about 0.1, 0.5 s off 0.3
    if exact:
        lag = int(round(start * 100))
        np.testing.assert_allclose(stored[1:].astype(np.float32),
                                   reference[lag + 1:lag + 998].astype(np.float32), atol=2 ** -6)


def shard(published, manifest, videos, out, *extra, workers=2,
          labels=True) -> tuple[int, str, str]:
    """`avsiam shard` in this process: (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["shard", "--manifest", str(manifest), "--videos", str(videos), "--out", str(out),
            "--workers", str(workers), *SMALL, *extra]
    if labels:
        args += ["--labels", str(published["labels"])]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli(args)
    return code, stdout.getvalue(), stderr.getvalue()


def samples(out):
    """{source_id: (json, fbank)} of every sample in the shards of `out`."""
    found = {}
    for path in sorted(out.glob("train-*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                bank = members.get(f"{meta['key']}.{fmt.FBANK_SUFFIX}")
                found[meta["source_id"]] = (meta, np.load(io.BytesIO(bank)))
    return found


def records(out):
    return {r["source_id"]: r for path in sorted(out.glob("train-*.parquet"))
            for r in pq.read_table(path).to_pylist()}


@pytest.fixture(scope="module")
def full_run(published, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    code, stdout, stderr = shard(published, published["audioset"], published["full"], out)
    return dict(out=out, code=code, stdout=stdout, stderr=stderr)


WINDOW_ROWS = [r for r in AUDIOSET_ROWS if r[4] == "source"]


def test_full_length_files_every_row_recorded_and_fbank_of_the_right_window(
        published, full_run, source_fbank):
    assert full_run["code"] == 0, full_run["stderr"]
    out = full_run["out"]
    rec, found = records(out), samples(out)
    assert list(rec) == [r[0] for r in AUDIOSET_ROWS]
    for ytid, start, end, *_ in WINDOW_ROWS:              # windows at 0, 10, 30 s and 7-17 s
        assert rec[ytid]["status"] == "ok", rec[ytid]["reason"]
        assert (rec[ytid]["window_source"], rec[ytid]["coverage"]) == ("seek", 1.0)
        meta, bank = found[ytid]
        assert (meta["start"], meta["end"], meta["window_source"]) == (start, end, "seek")
        assert (meta["decoded_seconds"], meta["coverage"]) == (10.0, 1.0)
        assert_window_of_source(bank, source_fbank, start, exact=True)
    seventy = found["-seventyPct"][0]                      # a 7-s file for a 10-s window: kept
    assert seventy["window_source"] == "cut" and 0.69 < seventy["coverage"] < 0.72
    assert rec["-seventyPct"]["coverage"] == seventy["coverage"]
    assert rec["--shortHalf"]["reason"].startswith(
        "short_window: --shortHalf.mp4 holds 4.0")
    assert "coverage 0.40 < --min-coverage 0.5" in rec["--shortHalf"]["reason"]
    assert rec["--shortHalf"]["coverage"] == pytest.approx(0.4, abs=0.01)
    assert rec["-truncated1"]["reason"].startswith(   # +faststart: the index claims all 45 s
        "truncated_file: -truncated1.mp4 claims 10.000 s of audio in the window [30, 40] s "
        "(seeked in the file) but ffmpeg decoded 0.000 s")
    assert rec["--missing01"]["reason"].startswith("missing_file:")
    info = json.loads((out / fmt.DATASET_JSON).read_text())
    assert info["counts"]["ok"] == 5 and info["counts"]["failed"] == 3
    assert info["failure_reasons"] == {"missing_file": 1, "short_window": 1, "truncated_file": 1}
    assert info["params"]["segments"] == "auto" and info["params"]["min_coverage"] == 0.5
    assert info["videos"] == str(published["full"])
    assert "missing files: 1 of 8 rows (12.5%" in full_run["stdout"]
    assert "other failures: short_window 1, truncated_file 1" in full_run["stdout"]
    assert cli(["verify", "--out", str(out)]) == 0


def test_cut_files_from_a_headerless_csv_give_the_same_windows(published, source_fbank, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = shard(published, published["headerless"], published["cut"], out)
    assert code == 0, stderr
    info = json.loads((out / fmt.DATASET_JSON).read_text())
    assert info["manifest_kind"] == "audioset" and info["counts"]["rows"] == len(AUDIOSET_ROWS)
    rec, found = records(out), samples(out)
    for ytid, start, end, *_ in WINDOW_ROWS:
        assert rec[ytid]["status"] == "ok", rec[ytid]["reason"]
        meta, bank = found[ytid]
        assert (meta["start"], meta["window_source"], meta["coverage"]) == (start, "cut", 1.0)
        assert_window_of_source(bank, source_fbank, start, exact=False)
    assert rec["-truncated1"]["reason"].startswith("truncated_file: -truncated1.mp4 claims 10.0")
    assert "download it again" in rec["-truncated1"]["reason"]
    assert info["failure_reasons"] == {"missing_file": 1, "short_window": 1, "truncated_file": 1}


def run_clip(folder, name, start, end, **params):
    ctx = ClipContext(str(folder), ClipParams(num_frames=2, frame_size=32, **params),
                      MediaLimits(probe_timeout_s=20, decode_timeout_s=30), "h")
    return process_clip(ClipTask(row=0, key="k", source_id=name, candidates=(name,), start=start,
                                 end=end, labels=(), label_indices=()), ctx)


def test_cut_files_taken_as_full_length_fail_with_a_reason_never_the_wrong_audio(published):
    """What `--segments full` (the old behaviour) does with cut files: the rows that used to
    fail as window_outside_file / decode_failed, or to be stored with the last 3 s of a 7-17 s
    clip, are recorded failures that name the fix."""
    cut = published["cut"]
    first = run_clip(cut, "--4gqARaEJE.mp4", 0, 10, segments="full")
    assert first.status == "ok" and first.window_source == "seek"   # a 0-10 window is both
    outside = run_clip(cut, "-1pRmoJIGQc.mp4", 30, 40, segments="full")
    assert outside.reason.startswith("window_outside_file: window starts at 30 s but the file "
                                     "lasts 10.0") and "pass --segments cut" in outside.reason
    tail = run_clip(cut, "-0a0cqWQH2s.mp4", 10, 20, segments="full")   # the file lasts 10.000 s
    assert tail.reason.startswith("window_outside_file: window starts at 10 s"), tail.reason
    seven = run_clip(cut, "--7seventen.mp4", 7, 17, segments="full")
    assert seven.status == "failed" and seven.reason.startswith(
        "short_window: --7seventen.mp4 holds 3.0"), seven.reason
    assert "pass --segments cut (or auto)" in seven.reason and seven.coverage == \
        pytest.approx(0.3, abs=0.01)
    auto = run_clip(cut, "--7seventen.mp4", 7, 17)
    assert auto.status == "ok" and (auto.window_source, auto.coverage) == ("cut", 1.0)


def test_segments_cut_takes_a_file_auto_would_seek(published, source_fbank, tmp_path):
    """A 12-s file cut for a 30-40 s row (2 s more than its window): auto seeks (the file is not
    within 1.5 s of the window) and says so; --segments cut takes its first 10 s."""
    encode_youtube_like(tmp_path / "long_cut.mp4", published["source"], 30, 12)
    auto = run_clip(tmp_path, "long_cut.mp4", 30, 40)
    assert auto.reason.startswith("window_outside_file:") and "--segments cut" in auto.reason
    cut = run_clip(tmp_path, "long_cut.mp4", 30, 40, segments="cut")
    assert cut.status == "ok" and cut.window_source == "cut", cut.reason
    meta = json.loads(dict(cut.members)["json"])
    assert (meta["decoded_seconds"], meta["coverage"], meta["duration"]) == (10.0, 1.0, 12.0)
    bank = np.load(io.BytesIO(dict(cut.members)[fmt.FBANK_SUFFIX]))
    assert_window_of_source(bank, source_fbank, 30, exact=False)
    full = run_clip(published["full"], "-1pRmoJIGQc.mp4", 30, 40, segments="cut")
    assert full.status == "ok" and where_in_source(
        np.load(io.BytesIO(dict(full.members)[fmt.FBANK_SUFFIX])), source_fbank)[0] == 0.0


def test_min_coverage_keeps_or_fails_windows_shorter_than_asked(published):
    folder = published["full"]
    assert run_clip(folder, "--shortHalf.mp4", 30, 40, min_coverage=0.3).status == "ok"
    strict = run_clip(folder, "-seventyPct.mp4", 0, 10, min_coverage=0.8)
    assert strict.reason.startswith("short_window: -seventyPct.mp4 holds 7.0")
    assert "< --min-coverage 0.8" in strict.reason


def test_truncated_faststart_files(published):
    """The index at the front claims the whole file: a window past the data decodes nothing, a
    cut file decodes half, both are truncated_file; a window before the cut is intact and ok."""
    full = run_clip(published["full"], "-truncated1.mp4", 30, 40)
    assert full.status == "failed" and full.reason.startswith("truncated_file:")
    assert run_clip(published["full"], "-truncated1.mp4", 0, 10).status == "ok"
    cut = run_clip(published["cut"], "-truncated1.mp4", 30, 40)
    assert cut.reason.startswith("truncated_file: -truncated1.mp4 claims 10.0"), cut.reason
    assert "ffmpeg reports a partial file" in cut.reason and cut.window_source == "cut"
    assert cut.coverage is not None and cut.coverage < 0.8


def test_vggsound_names_in_both_layouts_and_the_split_choice(published, source_fbank, tmp_path):
    template = ("--template", "{ytid}_{start:06d}.mp4")
    code, _, stderr = shard(published, published["vggsound"], published["vgg"], tmp_path / "a",
                            *template, labels=False)
    assert code == 2 and not (tmp_path / "a").exists()
    assert "holds test and train rows: pass --select-split test or --select-split train" in stderr
    assert "--select-split all shards every row together" in stderr
    code, _, stderr = shard(published, published["vggsound"], published["vgg"], tmp_path / "vgg",
                            *template, "--select-split", "all", labels=False)
    assert code == 0, stderr
    found = samples(tmp_path / "vgg")
    for ytid, start, label, _, kind in VGGSOUND_ROWS:
        meta, bank = found[ytid]
        assert meta["labels"] == [label]
        assert meta["window_source"] == ("seek" if kind == "source" else "cut")
        assert meta["path"] == f"{ytid}_{start:06d}.mp4"
        assert_window_of_source(bank, source_fbank, start, exact=kind == "source")


def test_preflight_stops_before_writing_and_allow_missing_goes_on(published, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = shard(published, published["audioset"], published["vgg"], out)
    assert code == 2 and not out.exists(), stderr
    videos = published["vgg"]
    assert stderr.startswith(f"avsiam shard: none of the first {len(AUDIOSET_ROWS)} rows finds "
                             f"its file under --videos {videos} (e.g. {videos}/--4gqARaEJE.mp4, "
                             f"from --template '{{ytid}}' and --extensions mp4,")
    assert "it holds 2 entries, e.g. ---g-f_I2yQ_000030.mp4, --0PQM4-hqg_000010.mp4" in stderr
    assert "--allow-missing" in stderr and len(stderr.strip().splitlines()) == 1
    code, stdout, stderr = shard(published, published["audioset"], published["vgg"], out,
                                 "--allow-missing", workers=1)
    assert code == 1
    assert "missing files: 8 of 8 rows (100.0%" in stdout
    assert "none of the 8 rows became a sample" in stderr
    info = json.loads((out / fmt.DATASET_JSON).read_text())
    assert info["counts"]["ok"] == 0 and info["failure_reasons"] == {"missing_file": 8}
    # a re-run with everything committed still says it
    code, stdout, _ = shard(published, published["audioset"], published["vgg"], out,
                            "--allow-missing", workers=1)
    assert code == 1 and "missing files: 8 of 8 rows" in stdout


@pytest.mark.parametrize("change, named", [
    (("--segments", "cut"), "segments: 'auto' -> 'cut'"),
    (("--min-coverage", "0.3"), "min_coverage: 0.5 -> 0.3"),
    (("--extensions", "mp4,mkv"), "extensions: ["),
    (("--template", "{ytid}.mp4"), "template: '{ytid}' -> '{ytid}.mp4'"),
    (("--frame-size", "48"), "frame_size: 32 -> 48"),
])
def test_a_rerun_may_not_change_its_inputs(published, full_run, change, named):
    code, _, stderr = shard(published, published["audioset"], published["full"],
                            full_run["out"], *change)
    assert code == 2 and named in stderr, stderr


def test_a_rerun_may_not_take_another_videos_folder(published, full_run, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(published["full"], other)
    code, _, stderr = shard(published, published["audioset"], other, full_run["out"])
    assert code == 2
    assert f"was made from --videos {published['full']}, not {other}" in stderr
    code, stdout, _ = shard(published, published["audioset"], published["full"], full_run["out"])
    assert code == 0 and "0 shard(s) written, 1 already committed" in stdout
