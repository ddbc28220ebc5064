"""Runs that never lose work and explain themselves (issue 16): re-run refusal, --overwrite,
retention of the running run's checkpoints, fallback past a damaged checkpoint, config.yaml,
run.json, train.log, metrics time and the "resumed from step N (path)" line. Real `avsiam pretrain`
runs (DeepSpeed on CPU) on real shards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import tiny_shards
from trainer.engine.checkpoint import COMPLETE, find_resume_point
from trainer.engine.checkpoint_files import checkpoint_problem, record_files
from trainer.engine.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
BASE = ["--config", "tiny_cpu", "model.depth=1", "model.audio_frames=64", "model.image_size=32",
        "model.decoder_depth=1", "data.batch_size=3", "log_every=1", "progress=false",
        "checkpoint.every_steps=2", "checkpoint.keep=0"]


def _avsiam(*argv, timeout=400):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _ok(*argv):
    proc = _avsiam(*argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return tiny_shards(tmp_path_factory.mktemp("run_folder_data"))


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))


@pytest.mark.e2e
def test_rerun_refused_overwrite_starts_afresh_and_the_folder_explains_itself(shards, tmp_path):
    run = tmp_path / "pt"
    _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=4", "--out", run)
    assert _steps(run) == ["step_00000002", "step_00000004"]
    # the folder explains the run
    from trainer.engine.config import load_config
    config = load_config(run / "config.yaml")
    assert config.max_steps == 4 and config.out_dir == str(run)
    assert load_config(run / "config.yaml").to_dict() == config.to_dict()
    start = json.loads((run / "run.json").read_text())["starts"][0]
    assert start["command"] == "pretrain" and "max_steps=4" in start["argv"]
    assert len(start["git"]["commit"]) == 40 and isinstance(start["git"]["dirty"], bool)
    assert start["world_size"] == 1 and start["resumed_from"] is None and start["host"]
    assert {"torch", "deepspeed", "timm", "webdataset"} <= set(start["versions"]) and start["python"]
    assert all(isinstance(r["time"], float) for r in read_jsonl(run / "metrics.jsonl"))
    log = (run / "train.log").read_text()
    assert "pretrain: starting at step 0" in log and "pretrain: finished after step 4" in log

    # a plain re-run is refused in one line naming the newest step, and changes nothing
    before = (run / "metrics.jsonl").read_text()
    proc = _avsiam("pretrain", *BASE, f"data.train={shards}", "max_steps=2", "--out", run)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "step_00000004" in lines[0], proc.stderr
    assert "--resume auto" in lines[0] and "--overwrite" in lines[0]
    assert (run / "metrics.jsonl").read_text() == before and _steps(run) == ["step_00000002", "step_00000004"]

    # --resume none --overwrite: a new run, whose checkpoints are the only ones
    _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=2", "--out", run, "--resume", "none",
        "--overwrite")
    assert _steps(run) == ["step_00000002"]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert len(json.loads((run / "run.json").read_text())["starts"]) == 1

    # --resume auto continues it: one more start in run.json, the resume line in train.log
    proc = _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=4", "--out", run, "--resume", "auto",
               "progress=true")
    # off a terminal: a plain line per record, no bar; no library chatter
    assert "pretrain step 3/4 (75%): loss " in proc.stderr and "\r" not in proc.stderr
    assert "pretrain step 3/4 (75%): loss " in (run / "train.log").read_text()
    assert "built successfully" not in proc.stdout and "No CUDA runtime" not in proc.stderr
    line = f"pretrain: resumed from step 2 ({run / 'checkpoints' / 'step_00000002'})"
    assert line in proc.stderr and line in (run / "train.log").read_text()
    starts = json.loads((run / "run.json").read_text())["starts"]
    assert len(starts) == 2 and starts[1]["resumed_step"] == 2
    assert starts[1]["resumed_from"] == str(run / "checkpoints" / "step_00000002")


@pytest.mark.e2e
def test_retention_keeps_the_running_runs_checkpoints_over_a_later_branch(shards, tmp_path):
    """Resuming a run from an earlier checkpoint: its new checkpoints survive keep=1 retention,
    the later checkpoints of the branch it left are moved aside and never resumed."""
    run = tmp_path / "pt"
    _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=6", "--out", run)
    _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=4", "--out", run, "checkpoint.keep=1",
        "checkpoint.every_steps=1", "--resume", run / "checkpoints" / "step_00000002")
    assert _steps(run) == ["step_00000004", "step_00000004.superseded", "step_00000006.superseded"]
    assert find_resume_point("auto", run / "checkpoints").step == 4
    assert json.loads((run / "checkpoints" / "step_00000004" / COMPLETE).read_text())["step"] == 4


@pytest.mark.e2e
def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one(shards, tmp_path):
    run = tmp_path / "pt"
    _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=4", "--out", run)
    model = run / "checkpoints" / "step_00000004" / "mp_rank_00_model_states.pt"
    model.write_bytes(model.read_bytes()[:1000])
    proc = _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=6", "--out", run, "--resume", "auto")
    assert "checkpoint step_00000004 is damaged (mp_rank_00_model_states.pt has 1000 bytes" in proc.stderr
    assert "resumed from step 2" in proc.stderr
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 7))
    assert checkpoint_problem(run / "checkpoints" / "step_00000006") is None


def _saved(root: Path, step: int) -> Path:
    folder = root / f"step_{step:08d}"
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"m" * 100)
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 200)
    marker = {"step": step, "world_size": 1, "zero_stage": 2, "files": record_files(folder)}
    (folder / COMPLETE).write_text(json.dumps(marker))
    return folder


@pytest.mark.parametrize("damage,why", [
    (lambda f: (f / "mp_rank_00_model_states.pt").write_bytes(b""), "has 0 bytes, complete.json records 100"),
    (lambda f: (f / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink(), "optim_states.pt is missing"),
    (lambda f: (f / COMPLETE).write_text("{}"), "complete.json lacks step, world_size, zero_stage"),
    (lambda f: (f / COMPLETE).write_text("{not json"), "complete.json is unreadable"),
])
def test_every_kind_of_damage_is_named_and_skipped(tmp_path, caplog, damage, why):
    _saved(tmp_path, 4)
    damage(_saved(tmp_path, 8))
    assert why in checkpoint_problem(tmp_path / "step_00000008")
    with caplog.at_level("WARNING", logger="trainer.engine"):
        assert find_resume_point("auto", tmp_path).step == 4
    assert "step_00000008 is damaged" in caplog.text and why in caplog.text
    with pytest.raises(ValueError, match="the checkpoint is damaged"):
        find_resume_point(str(tmp_path / "step_00000008"), tmp_path)


def test_no_intact_checkpoint_is_one_error(tmp_path):
    (_saved(tmp_path, 4) / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no intact checkpoint .*--resume none --overwrite"):
        find_resume_point("auto", tmp_path)


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from trainer.engine.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    plain, tty = io.StringIO(), Terminal()
    for stream in (plain, tty):
        progress = Progress(10, initial=4, desc="pretrain", stream=stream)
        progress.update(1)
        progress.report(loss="1.234")
        progress.close()
    assert plain.getvalue() == "pretrain step 5/10 (50%): loss 1.234\n"
    assert "\r" in tty.getvalue() and "step/s" in tty.getvalue()


def test_overwrite_wipes_every_output_of_the_old_run_and_nothing_else(tmp_path):
    from trainer.engine.run_folder import wipe_run
    out = tmp_path / "ft"
    _saved(out / "checkpoints", 4)
    (out / "checkpoints" / "step_00000006").mkdir()                # an interrupted save
    for name in ("metrics.jsonl", "train.log", "run.json", "config.yaml", "model.safetensors",
                 "finetune.json", "notes.txt"):
        (out / name).write_text("old")
    for folder in ("tensorboard", "epochs"):
        (out / folder).mkdir()
        (out / folder / "x").write_text("old")
    wipe_run(out, out / "checkpoints")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "notes.txt"]
    assert list((out / "checkpoints").iterdir()) == []


def test_a_second_run_on_a_folder_in_use_stops_in_one_line(shards, tmp_path):
    """Another process holds the run's lock (as a running job does): a second run into the same
    folder is refused before it reads or writes anything there; once the holder is gone it starts."""
    import fcntl
    import os

    run = tmp_path / "run"
    run.mkdir()
    holder = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(holder, b"node7 pid 4242\n")
    try:
        proc = _avsiam("pretrain", *BASE, f"data.train={shards}", "max_steps=2", "--out", run)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another run (node7 pid 4242)" in lines[0]
        assert "--out" in lines[0] and sorted(p.name for p in run.iterdir()) == ["run.lock"]
    finally:
        os.close(holder)
    _ok("pretrain", *BASE, f"data.train={shards}", "max_steps=2", "--out", run)
    assert _steps(run) == ["step_00000002"]
