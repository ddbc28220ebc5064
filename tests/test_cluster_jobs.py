"""Real jobs on the local two-node SLURM cluster, submitted with `avsiam submit`:

- a 2-task sharding array writes the same bytes as one local `avsiam shard` run;
- a 2-node pretraining job (one CPU rank per node, DeepSpeed over gloo) trains K steps and
  checkpoints;
- a job warned twice (as before a time limit or a preemption) checkpoints, requeues itself, resumes,
  and ends at the same final step and loss as the uninterrupted job.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm_fixtures import (REPO, avsiam_submit, job_records, slurm_cluster,  # noqa: F401
                                  wait_for_jobs, wait_until)

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]

STEPS = 12            # optimizer steps of the pretraining runs
JOB_TIMEOUT_S = 420   # one job (or one phase of it), on a shared, busy 2-core machine


def _require(*modules: str) -> None:
    """Skip (naming the missing piece) only while a module this test drives does not exist."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} does not exist in this checkout yet")


def _avsiam(*argv: str, cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"avsiam {argv[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm_jobs")


@pytest.fixture(scope="module")
def synth(work) -> Path:
    _require("cluster.commands.synth_command")
    _avsiam("synth", "--out", str(work / "synth"), "--clips", "8", "--classes", "4", "--seed", "0",
            "--seconds", "2", "--size", "160x120", "--workers", "2", cwd=work)
    return work / "synth"


def _shard_args(synth: Path, out: Path) -> list[str]:
    return ["--manifest", str(synth / "balanced_train_segments.csv"),
            "--labels", str(synth / "class_labels_indices.csv"), "--videos", str(synth / "videos"),
            "--out", str(out), "--samples-per-shard", "2", "--no-progress"]


@pytest.fixture(scope="module")
def local_shards(synth, work) -> Path:
    """The reference: one local run of `avsiam shard` (shards of 2 clips)."""
    _require("cluster.commands.shard_command")
    _avsiam("shard", *_shard_args(synth, work / "local_shards"), "--workers", "2", cwd=work)
    return work / "local_shards"


def _files(root: Path) -> dict[str, bytes]:
    """Every output file by relative path, except the per-task run logs (named by task) and the
    lock files' contents (they name the host and pid of their last holder, for messages only)."""
    def content(p: Path) -> bytes:
        return b"" if p.relative_to(root).parts[0] == "locks" else p.read_bytes()
    return {str(p.relative_to(root)): content(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "logs"}


def test_sharding_array_writes_the_same_bytes_as_a_local_run(slurm_cluster, synth, local_shards,
                                                             work):
    """Task 0 is also warned as soon as it starts (as before its time limit): it is stopped,
    requeues itself and finishes its share on the next run, with no shard lost or doubled."""
    out = work / "array_shards"
    job_id = avsiam_submit(slurm_cluster, "shard", "--array", "2", "--cpus-per-task", "1",
                           "--output", str(work / "%x-%A_%a.out"), "--",
                           *_shard_args(synth, out), cwd=work)
    task0_log = work / f"avsiam-shard-{job_id}_0.out"
    wait_until(lambda: task0_log.exists() and "(restart 0)" in task0_log.read_text(), JOB_TIMEOUT_S,
               "array task 0 to start")
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", f"{job_id}_0")
    records = wait_for_jobs(slurm_cluster, job_id, JOB_TIMEOUT_S)
    by_task = {r["ArrayTaskId"]: r for r in records}
    assert sorted(by_task) == ["0", "1"]
    logs = {k: Path(r["StdOut"]).read_text() for k, r in by_task.items()}
    assert all(r["JobState"] == "COMPLETED" for r in records), logs
    assert (by_task["0"]["Restarts"], by_task["1"]["Restarts"]) == ("1", "0"), logs
    assert "requeueing job" in logs["0"] and "(restart 1)" in logs["0"]
    # each task did its own share: task k of 2 logged its runs under its own name
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "shard-task0000-of-0002.jsonl", "shard-task0001-of-0002.jsonl"]
    expected, got = _files(local_shards), _files(out)
    assert sorted(got) == sorted(expected)
    assert [name for name in expected if got[name] != expected[name]] == []
    assert len([n for n in expected if n.endswith(".tar")]) >= 2  # both tasks had work


# --- pretraining ---------------------------------------------------------------------------------

def _pretrain_args(shards: Path, run: Path) -> list[str]:
    return ["--config", "tiny_cpu", f"out_dir={run}", f"data.train={shards}",
            f"max_steps={STEPS}", "log_every=1", "progress=false", "data.batch_size=3",
            "data.num_workers=0", "optim.warmup_steps=2", "checkpoint.every_steps=0"]


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _last_step(run: Path) -> int:
    records = _metrics(run)
    return max((r["step"] for r in records), default=0)


def _final(run: Path) -> dict:
    """The last record of each step (a resumed run may re-log nothing; keep the newest)."""
    by_step = {}
    for record in _metrics(run):
        by_step[record["step"]] = {**by_step.get(record["step"], {}), **record}
    return by_step[max(by_step)]


def _submit_pretrain(cluster, shards: Path, run: Path, work: Path) -> tuple[str, Path]:
    log = work / f"{run.name}.out"
    job_id = avsiam_submit(cluster, "pretrain", "--nodes", "2", "--cpus-per-task", "1",
                           "--job-name", run.name, "--output", str(log), "--",
                           *_pretrain_args(shards, run), cwd=work,
                           env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return job_id, log


@pytest.fixture(scope="module")
def plain_job(slurm_cluster, local_shards, work) -> tuple[str, Path, Path]:
    """A 2-node pretraining job left undisturbed: (job id, run folder, log). Only submitted here,
    so that the preemption test's job runs beside it (each takes one core per node)."""
    _require("cluster.commands.pretrain_command", "trainer.engine.trainer")
    job_id, log = _submit_pretrain(slurm_cluster, local_shards, work / "run_plain", work)
    return job_id, work / "run_plain", log


def _finished(cluster, job: tuple[str, Path, Path]) -> Path:
    job_id, run, log = job
    [record] = wait_for_jobs(cluster, job_id, JOB_TIMEOUT_S, log=log)
    assert record["JobState"] == "COMPLETED", log.read_text()[-4000:]
    assert record["Restarts"] == "0"
    return run


def test_warned_job_requeues_resumes_and_ends_like_the_uninterrupted_one(slurm_cluster, plain_job,
                                                                          local_shards, work):
    job_id, log = _submit_pretrain(slurm_cluster, local_shards, work / "run_warned", work)
    run = work / "run_warned"
    stopped_at = []
    for restart in (0, 1):  # warn the first run and the first requeued run
        def running_and_past(restart=restart):
            [rec] = job_records(slurm_cluster, job_id) or [{}]
            floor = stopped_at[-1] + 1 if stopped_at else 1
            return (rec.get("JobState") == "RUNNING" and rec.get("Restarts") == str(restart)
                    and _last_step(run) >= floor)
        wait_until(running_and_past, JOB_TIMEOUT_S, f"run {restart} of job {job_id} to train")
        assert _last_step(run) < STEPS, "the run ended before it could be warned: raise STEPS"
        slurm_cluster.run("scancel", "--batch", "--signal=USR1", job_id)
        wait_until(lambda restart=restart: (job_records(slurm_cluster, job_id) or [{}])[0].get(
            "Restarts") == str(restart + 1), JOB_TIMEOUT_S, f"job {job_id} to requeue itself")
        stopped_at.append(_last_step(run))
    [record] = wait_for_jobs(slurm_cluster, job_id, JOB_TIMEOUT_S, log=log)
    text = log.read_text()
    assert record["JobState"] == "COMPLETED", text[-4000:]
    assert record["Restarts"] == "2"
    # both warnings stopped a run early, each later run went further, and the log kept every run
    assert stopped_at[0] < stopped_at[1] < STEPS, stopped_at
    assert text.count("step ended with status 0 after the warning: requeueing job") == 2
    assert all(f"(restart {n})" in text for n in (0, 1, 2))
    final, reference = _final(run), _final(_finished(slurm_cluster, plain_job))
    assert final["step"] == reference["step"] == STEPS
    assert final["loss"] == reference["loss"], (final, reference)


def test_two_node_pretraining_trains_and_checkpoints(slurm_cluster, plain_job, work):
    run = _finished(slurm_cluster, plain_job)
    log = (work / "run_plain.out").read_text()
    assert "2 nodes x 1 ranks" in log
    assert _last_step(run) == STEPS
    steps = [r["step"] for r in _metrics(run) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    # a ZeRO checkpoint of a 2-rank data-parallel group: one optimizer shard per rank
    shards = sorted(p.name for p in run.rglob("*optim_states.pt"))
    assert len(shards) == 2 and {"rank_0", "rank_1"} <= {s[8:14] for s in shards}, shards
