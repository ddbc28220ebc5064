"""`avsiam shard` end to end on the synthetic dataset: deterministic bytes, readable by plain
webdataset and tar, every row recorded, dataset.json, `avsiam stats`, `avsiam verify`, SLURM-style
task split, other manifest kinds and --retry-failed."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.cli import main as cli
from pipeline.stats import Moments, combine_all, sample_moments
from shards import format as fmt
from fixtures import run_cli, shard_args, snapshot, synth_segments, write_truncated

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    summary, rows = synth_segments(root, clips=8, classes=3, seed=0)
    videos = root / "synth" / "videos"
    (videos / "corrupt0001.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    lines = ["# Segments csv", "# num_ytids=10",
             "# YTID, start_seconds, end_seconds, positive_labels", *rows]
    labels = root / "synth" / "class_labels_indices.csv"
    mid = summary["clips"][0]["labels"][0]
    lines.insert(5, f'missing0001, 0.000, 2.000, "{mid}"')
    lines.append(f'corrupt0001, 0.000, 2.000, "{mid}"')
    manifest = root / "segments.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = root / "w2"
    run_cli(*shard_args(manifest, labels, videos, out, "--samples-per-shard", "3", workers=2))
    return dict(root=root, summary=summary, videos=videos, labels=labels, manifest=manifest,
                out=out, rows=len(summary["clips"]) + 2)


def test_progress_off_a_terminal_is_plain_lines(data, tmp_path):
    """stderr is a pipe here (as a SLURM log file): no redrawn bar, one closing progress line."""
    args = [a for a in shard_args(data["manifest"], data["labels"], data["videos"], tmp_path / "p",
                                  workers=1) if a != "--no-progress"]
    stderr = run_cli(*args).stderr
    assert "\r" not in stderr
    assert f"shard train task 0/1: {data['rows']}/{data['rows']} clips (100%)" in stderr, stderr


def test_same_bytes_with_one_and_two_workers(data, tmp_path):
    assert cli(shard_args(data["manifest"], data["labels"], data["videos"], tmp_path / "w1",
                          "--samples-per-shard", "3", workers=1)) == 0
    one, two = snapshot(tmp_path / "w1"), snapshot(data["out"])
    assert sorted(one) == sorted(two) == sorted(
        [fmt.MANIFEST_NAME, fmt.DATASET_JSON]
        + [f"train-00000{k}.{ext}" for k in range(4) for ext in ("tar", "parquet", "stats.json")])
    for name in one:
        assert one[name] == two[name], name


def test_plain_webdataset_and_tar_read_the_shards(data, tmp_path):
    import webdataset as wds

    url = fmt.brace_pattern(data["out"], "train", 4)
    samples = list(wds.WebDataset(url, shardshuffle=False).decode())
    assert len(samples) == 8
    for sample in samples:
        meta = sample["json"]
        assert sample["__key__"] == meta["key"] and fmt.is_safe_key(meta["key"])
        assert sample["fbank.npy"].dtype == np.float16
        assert sample["fbank.npy"].shape == (meta["fbank_frames"], 128)
        assert 195 <= meta["fbank_frames"] <= 210
        assert [k for k in sample if k.endswith(".jpg")] == [f"f{i}.jpg" for i in range(4)]
        assert set(meta) == set(fmt.META_FIELDS) and meta["label_indices"]
        assert (meta["width"], meta["height"], meta["fps"]) == (160, 120, 25.0)
    listing = subprocess.run(["tar", "-tvf", str(data["out"] / "train-000000.tar")],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert all(line.startswith("-rw-r--r-- 0/0") and "1970-01-01 00:00" in line for line in listing)
    subprocess.run(["tar", "-xf", str(data["out"] / "train-000000.tar"), "-C", str(tmp_path)],
                   check=True)
    assert len(list(tmp_path.iterdir())) == len(listing)


def test_every_row_has_a_record_with_status_and_reason(data):
    plan = pq.read_table(data["out"] / fmt.MANIFEST_NAME).to_pylist()
    records = [r for k in range(4)
               for r in pq.read_table(data["out"] / f"train-00000{k}.parquet").to_pylist()]
    assert [r["row"] for r in records] == [p["row"] for p in plan] == list(range(data["rows"]))
    assert [r["key"] for r in records] == [p["key"] for p in plan]
    failed = {r["source_id"]: r["reason"] for r in records if r["status"] == "failed"}
    assert set(failed) == {"missing0001", "corrupt0001"}
    assert failed["missing0001"].startswith("missing_file: none of missing0001, missing0001.mp4")
    assert failed["corrupt0001"].startswith("probe_failed: ffprobe exit 1")
    assert all(r["reason"] is None for r in records if r["status"] == "ok")
    stats = json.loads((data["out"] / "train-000000.stats.json").read_text())  # rows 0-2
    assert stats["rows"] == 3 and stats["failures"] == {"missing_file": 1}


def test_dataset_json_counts_and_exact_fbank_stats(data, tmp_path):
    info = json.loads((data["out"] / fmt.DATASET_JSON).read_text())
    assert info["counts"]["rows"] == 10 and info["counts"]["ok"] == 8
    assert info["failure_reasons"] == {"missing_file": 1, "probe_failed": 1}
    assert info["num_shards"] == 4 and info["shards"] == "train-{000000..000003}.tar"
    assert info["params"]["frame_size"] == 64 and info["labels"]["num_classes"] == 3
    per_shard = []
    for k in range(4):
        with tarfile.open(data["out"] / f"train-00000{k}.tar") as tar:
            per_shard.append([np.load(io.BytesIO(tar.extractfile(m).read())) for m in tar
                              if m.name.endswith(".fbank.npy")])
    values = [v for shard in per_shard for v in shard]
    everything = np.concatenate([v.astype(np.float64).ravel() for v in values])
    assert info["fbank_stats"]["count"] == everything.size
    assert info["fbank_stats"]["mean"] == pytest.approx(everything.mean(), rel=1e-12)
    assert info["fbank_stats"]["std"] == pytest.approx(everything.std(), rel=1e-12)
    # samples combined in row order within a shard, shards in shard order: the same bits
    assert combine_all(combine_all(sample_moments(v) for v in shard) for shard in per_shard) == \
        Moments.from_dict(
        {k: info["fbank_stats"][k] for k in ("count", "mean", "m2")})
    copy = tmp_path / "copy"
    shutil.copytree(data["out"], copy)
    (copy / fmt.DATASET_JSON).unlink()
    assert cli(["stats", "--out", str(copy), "--workers", "2"]) == 0
    assert (copy / fmt.DATASET_JSON).read_bytes() == (data["out"] / fmt.DATASET_JSON).read_bytes()


def test_verify_passes_then_names_the_broken_shard_and_sample(data, tmp_path, capsys):
    assert cli(["verify", "--out", str(data["out"])]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(data["out"], copy)
    tar_path = copy / "train-000002.tar"
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar if m.name.endswith(".f1.jpg"))
    blob = bytearray(tar_path.read_bytes())
    blob[member.offset_data:member.offset_data + member.size] = b"\0" * member.size
    tar_path.write_bytes(bytes(blob))
    (copy / "train-000003.stats.json").unlink()
    capsys.readouterr()
    assert cli(["verify", "--out", str(copy)]) == 1
    err = capsys.readouterr().err
    key = member.name.split(".")[0]
    assert f"train-000002 [{key}]: f1.jpg does not decode" in err
    assert "train-000002: tar sha256 differs" in err
    assert "train-000003: not committed" in err


def test_slurm_array_tasks_together_equal_one_run(data, tmp_path):
    out = tmp_path / "tasks"
    args = shard_args(data["manifest"], data["labels"], data["videos"], out,
                      "--samples-per-shard", "3", workers=1)
    run_cli(*args, env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"})
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000001.tar", "train-000003.tar"]
    assert not (out / fmt.DATASET_JSON).exists()
    assert cli(args + ["--task-index", "0", "--num-tasks", "2"]) == 0
    assert snapshot(out) == snapshot(data["out"])


def test_vggsound_csv_with_template_and_folder_mode(data, tmp_path):
    vgg = data["root"] / "synth" / "vggsound.csv"
    out = tmp_path / "vgg"
    # VGGSound rows ask for 10 s; the synthetic clips last 2 s (coverage 0.2)
    assert cli(shard_args(vgg, None, data["videos"], out, "--select-split", "train",
                          "--template", "{ytid}.mp4", "--min-coverage", "0.2", workers=2)) == 0
    info = json.loads((out / fmt.DATASET_JSON).read_text())
    train = [c for c in data["summary"]["clips"] if c["split"] == "train"]
    assert info["counts"] == {**info["counts"], "rows": len(train), "ok": len(train)}
    assert info["manifest_kind"] == "vggsound" and info["labels"]["source"] == "manifest"
    folder = tmp_path / "folder"
    assert cli(["shard", "--videos", str(data["videos"]), "--out", str(folder), "--workers", "2",
                "--no-progress", "--frame-size", "64", "--num-frames", "2", "--split",
                "unlabelled", "--extensions", "mp4"]) == 0
    info = json.loads((folder / fmt.DATASET_JSON).read_text())
    assert info["counts"]["rows"] == 9 and info["counts"]["ok"] == 8
    assert info["failure_reasons"] == {"probe_failed": 1}
    assert (folder / "unlabelled-000000.tar").exists()


def test_retry_failed_redoes_only_failed_rows_and_equals_a_fresh_run(data, tmp_path):
    clips = data["summary"]["clips"]
    videos = tmp_path / "videos"
    videos.mkdir()
    for clip in clips[:3]:
        shutil.copy(data["videos"] / f"{clip['ytid']}.mp4", videos)
    manifest = tmp_path / "seg.csv"
    ids = [clips[0]["ytid"], "late0001", clips[1]["ytid"], clips[2]["ytid"]]
    manifest.write_text("# a\n# b\n# c\n" + "".join(f'{i}, 0, 2, "{clips[0]["labels"][0]}"\n'
                                                    for i in ids))
    args = lambda out: shard_args(manifest, data["labels"], videos, out,  # noqa: E731
                                  "--samples-per-shard", "2", workers=2)
    assert cli(args(tmp_path / "retry")) == 0
    record = pq.read_table(tmp_path / "retry" / "train-000000.parquet").to_pylist()
    assert [r["status"] for r in record] == ["ok", "failed"]
    shutil.copy(videos / f"{clips[0]['ytid']}.mp4", videos / "late0001.mp4")
    assert cli(args(tmp_path / "retry")) == 0          # without the flag: nothing to do
    assert pq.read_table(tmp_path / "retry" / "train-000000.parquet")["status"][1].as_py() == \
        "failed"
    assert cli(args(tmp_path / "retry") + ["--retry-failed"]) == 0
    log = (tmp_path / "retry" / "logs" / "shard-task0000-of-0001.jsonl").read_text().splitlines()
    starts = [json.loads(line) for line in log if '"start"' in line]
    assert [s["rows_to_decode"] for s in starts] == [4, 0, 1]
    assert cli(args(tmp_path / "fresh")) == 0
    assert snapshot(tmp_path / "retry") == snapshot(tmp_path / "fresh")

    # a committed tar changed after commit (other size) is not reused: the shard is redone whole
    (videos / "late0001.mp4").unlink()
    assert cli(args(tmp_path / "damaged")) == 0
    tar = tmp_path / "damaged" / "train-000000.tar"
    damaged = bytearray(tar.read_bytes())
    damaged[2048:2560] = bytes(512)
    tar.write_bytes(bytes(damaged) + bytes(512))
    shutil.copy(videos / f"{clips[0]['ytid']}.mp4", videos / "late0001.mp4")
    assert cli(args(tmp_path / "damaged") + ["--retry-failed"]) == 0
    assert snapshot(tmp_path / "damaged") == snapshot(tmp_path / "fresh")


def test_a_rebuilt_plan_remembers_the_new_input_bytes(data, tmp_path):
    """Manifest bytes that change without changing the plan (a comment): the plan is rebuilt and
    checked once, then stored with the new inputs' fingerprint so later runs reuse it unread."""
    from pipeline.plan import read_plan

    manifest = tmp_path / "segments.csv"
    manifest.write_text(data["manifest"].read_text())
    args = shard_args(manifest, data["labels"], data["videos"], tmp_path / "out", workers=1)
    assert cli(args) == 0
    first = read_plan(tmp_path / "out").meta["input_fingerprint"]
    manifest.write_text("# edited comment\n" + data["manifest"].read_text())
    assert cli(args) == 0
    second = read_plan(tmp_path / "out").meta["input_fingerprint"]
    assert first and second and second != first


def _logging_ffmpeg(folder, log):
    """An `ffmpeg` first in PATH that appends its arguments to `log` (one line per run, NUL
    separated) and runs the real one."""
    real = shutil.which("ffmpeg")
    folder.mkdir()
    wrapper = folder / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> {log}\necho >> {log}\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def _inputs_per_run(log):
    """For each logged ffmpeg run, the media files it read (by name)."""
    runs = []
    for line in log.read_text().splitlines():
        args = line.split("\0")
        runs.append({args[i + 1].rsplit("/", 1)[-1] for i, a in enumerate(args[:-1]) if a == "-i"})
    return runs


def test_one_ffmpeg_per_batch_same_bytes_as_one_per_row(data, tmp_path):
    """--decode-batch 4 decodes four clips with ONE ffmpeg process; a batch whose run prints a
    message (a cut-off download among them) is decoded again clip by clip, so each clip gets its
    own verdict; the shards are the same bytes as with one process per row."""
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = sorted(data["videos"].glob("*.mp4"))[:7]
    names = [c.name for c in clips if not c.name.startswith("corrupt")][:6]
    for name in names:
        shutil.copy(data["videos"] / name, videos / name)
    start = videos / "faststart.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(videos / names[0]), "-c", "copy",
                    "-movflags", "+faststart", str(start)], check=True)
    write_truncated(videos / "cut_off.mp4", start, 0.6)
    start.unlink()
    rows = names[:4] + [names[4], "cut_off.mp4", names[5], "missing.mp4"]
    manifest = tmp_path / "rows.csv"
    manifest.write_text("id,path\n" + "".join(f"r{i},{name}\n" for i, name in enumerate(rows)))
    outs = {}
    for batch in (1, 4):
        log = tmp_path / f"ffmpeg{batch}.log"
        env = _logging_ffmpeg(tmp_path / f"bin{batch}", log)
        outs[batch] = tmp_path / f"b{batch}"
        run_cli("shard", "--manifest", str(manifest), "--videos", str(videos), "--out",
                str(outs[batch]), "--workers", "1", "--no-progress", "--frame-size", "64",
                "--num-frames", "4", "--decode-batch", str(batch), env=env)
        runs = _inputs_per_run(log)
        if batch == 1:
            assert all(len(inputs) == 1 for inputs in runs), runs
        else:
            assert runs[0] == set(names[:4]), runs              # four clips, one process
            assert runs[1] == {names[4], "cut_off.mp4", names[5]}, runs
            # the message made each clip of that batch run alone (the cut-off one gave it, and
            # its frames, missing past the cut, are decoded once more, in full)
            assert all(len(inputs) == 1 for inputs in runs[2:]), runs
            alone = list(dict.fromkeys(next(iter(inputs)) for inputs in runs[2:]))
            assert alone == [names[4], "cut_off.mp4", names[5]], runs
    one, four = snapshot(outs[1]), snapshot(outs[4])
    assert sorted(one) == sorted(four)
    for name in one:
        assert one[name] == four[name], name
    record = pq.read_table(outs[4] / "train-000000.parquet").to_pylist()
    assert [r["status"] for r in record] == ["ok"] * 5 + ["failed", "ok", "failed"]
    assert record[5]["reason"].startswith("truncated_file") and \
        record[7]["reason"].startswith("missing_file")
