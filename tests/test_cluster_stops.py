"""Every kind of stop a real cluster sends, on the local two-node SLURM cluster (with a device-less
gpu gres and a preempting partition), submitted with `avsiam submit`:

- `--gres=gpu:2` starts 2 ranks per node, and the job's first line says so and how it was found;
- a USR1 warning sent while the job is still starting (before any step) still ends in a requeue
  and a finished run whose losses equal an uninterrupted run's;
- a real preemption by a job of the high-priority partition (SIGTERM only, PreemptMode=REQUEUE)
  stops the ranks after a step; they save, the job requeues and resumes exactly;
- fine-tuning stopped by USR1 (the warning) and by SIGTERM (what preemption sends) requeues and
  its metrics equal an uninterrupted fine-tuning run's step for step.
"""
import json
import os
import re
from pathlib import Path

import pytest

from cluster.cli import COMMANDS
from cluster.local import LocalSlurmCluster, SlurmUnavailable
from tests.slurm_fixtures import avsiam_submit, job_records, wait_for_jobs, wait_until
from tests.test_cluster_jobs import _avsiam, _require, _shard_args

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]

STEPS = 20             # long enough that a preemption lands before the last step
JOB_TIMEOUT_S = 480
GRACE_S = 120          # what a preempted job gets between SIGTERM and SIGKILL


@pytest.fixture(scope="module")
def cluster():
    try:
        started = LocalSlurmCluster(nodes=2, gres_gpus=2, grace_time_s=GRACE_S).start()
    except SlurmUnavailable as exc:
        pytest.skip(f"local SLURM cluster unavailable: {exc}")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm_stops")


@pytest.fixture(scope="module")
def shards(work) -> Path:
    _require(*(COMMANDS[name][0] for name in ("synth", "shard", "pretrain")))
    _avsiam("synth", "--out", str(work / "synth"), "--clips", "8", "--classes", "4", "--seed", "0",
            "--seconds", "2", "--size", "160x120", "--workers", "2", cwd=work)
    _avsiam("shard", *_shard_args(work / "synth", work / "shards"), "--workers", "2", cwd=work)
    return work / "shards"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _pretrain_args(shards: Path, run: Path, steps: int = STEPS, batch: int = 3) -> list[str]:
    return ["--config", "tiny_cpu", f"out_dir={run}", f"data.train={shards}",
            f"max_steps={steps}", "log_every=1", "progress=false", f"data.batch_size={batch}",
            "data.num_workers=0", "optim.warmup_steps=2", "checkpoint.every_steps=0"]


def _finetune_args(shards: Path, init: Path, run: Path) -> list[str]:
    return ["--config", "tiny_cpu", "--init", str(init), f"--out={run}", f"data.train={shards}",
            "num_classes=4", "data.batch_size=1", "schedule.epochs=4", "schedule.decay_start=2",
            "average_last=1", "log_every=1", "progress=false"]


def _submit(cluster, kind: str, name: str, args: list[str], work: Path, *flags: str):
    log = work / f"{name}.out"
    job_id = avsiam_submit(cluster, kind, "--nodes", "2", "--cpus-per-task", "1", *flags,
                           "--job-name", name, "--output", str(log), "--", *args, cwd=work,
                           env=_env())
    return job_id, log


def _metrics(run: Path) -> dict[int, dict]:
    """Every logged step's record (the newest one of a step that was logged twice)."""
    by_step = {}
    path = run / "metrics.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = {**by_step.get(record["step"], {}), **record}
    return by_step


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(step, r["loss"]) for step, r in sorted(_metrics(run).items()) if "loss" in r]


def _last_step(run: Path) -> int:
    return max(_metrics(run), default=0)


def _completed(cluster, job_id: str, log: Path, restarts: str) -> str:
    [record] = wait_for_jobs(cluster, job_id, JOB_TIMEOUT_S, log=log)
    text = log.read_text()
    assert record["JobState"] == "COMPLETED", text[-4000:]
    assert record["Restarts"] == restarts, text[-4000:]
    return text


def _running_past(cluster, job_id: str, run: Path, step: int, restarts: str = "0"):
    def ready():
        [rec] = job_records(cluster, job_id) or [{}]
        return (rec.get("JobState") == "RUNNING" and rec.get("Restarts") == restarts
                and _last_step(run) >= step)
    wait_until(ready, JOB_TIMEOUT_S, f"job {job_id} to train past step {step}")


@pytest.fixture(scope="module")
def plain(cluster, shards, work):
    """An uninterrupted 2-node pretraining job (one CPU rank per node): the reference."""
    job_id, log = _submit(cluster, "pretrain", "plain", _pretrain_args(shards, work / "plain"),
                          work)
    text = _completed(cluster, job_id, log, "0")
    assert "2 nodes x 1 ranks (no GPU asked for or found: one CPU rank per node)" in text
    return work / "plain"


def test_a_warning_before_any_step_still_requeues_and_finishes_exactly(cluster, shards, work,
                                                                       plain):
    run = work / "early"
    job_id, log = _submit(cluster, "pretrain", "early", _pretrain_args(shards, run), work)
    wait_until(lambda: log.exists() and "(restart 0)" in log.read_text(), JOB_TIMEOUT_S,
               "the job to start")
    assert not (run / "metrics.jsonl").exists(), "a step ran before the warning: warn earlier"
    cluster.run("scancel", "--batch", "--signal=USR1", job_id)
    text = _completed(cluster, job_id, log, "1")
    assert "USR1 signal: stopping the step to requeue the job" in text
    assert "step ended with status 0 after the warning: requeueing job" in text
    assert "(restart 1)" in text
    assert _losses(run) == _losses(plain) and len(_losses(run)) == STEPS


def test_a_time_limit_before_the_step_stopped_still_requeues(cluster, shards, work, plain):
    """The warning, then TERM to the batch shell before the ranks could stop (a save slower than
    the warning, then the time limit): the job is requeued at once, not left to TIMEOUT."""
    run = work / "late"
    job_id, log = _submit(cluster, "pretrain", "late", _pretrain_args(shards, run), work)
    wait_until(lambda: log.exists() and "(restart 0)" in log.read_text(), JOB_TIMEOUT_S,
               "the job to start")
    cluster.run("scancel", "--batch", "--signal=USR1", job_id)
    wait_until(lambda: "USR1 signal" in log.read_text(), 60, "the warning to arrive")
    cluster.run("scancel", "--batch", "--signal=TERM", job_id)
    text = _completed(cluster, job_id, log, "1")
    assert "TERM after the warning: requeueing job" in text
    assert _losses(run) == _losses(plain)


def test_preemption_by_a_high_priority_job_requeues_and_resumes_exactly(cluster, shards, work,
                                                                        plain):
    run = work / "preempted"
    job_id, log = _submit(cluster, "pretrain", "preempted", _pretrain_args(shards, run), work)
    _running_past(cluster, job_id, run, 2)
    assert _last_step(run) < STEPS, "the run ended before it was preempted: raise STEPS"
    urgent_log = work / "urgent.out"
    urgent = cluster.run("sbatch", "--parsable", "--partition=urgent", "--nodes=2", "--exclusive",
                         f"--output={urgent_log}", "--wrap=echo urgent ran on $(hostname)").strip()
    text = _completed(cluster, job_id, log, "1")
    [urgent_record] = wait_for_jobs(cluster, urgent, JOB_TIMEOUT_S, log=urgent_log)
    assert urgent_record["JobState"] == "COMPLETED"
    # SLURM sent TERM to the step only; the ranks stopped after a step, saved, acknowledged, and
    # the batch shell requeued the job before the grace time ran out
    assert "step ended with status 0 after the stop request: requeueing job" in text
    assert "pretrain: SIGTERM after step" in text
    assert "Killed" not in text and "SignalException" not in text and "Traceback" not in text
    resumed = text.split("(restart 1)", 1)[1]
    assert f"pretrain: finished after step {STEPS}" in resumed
    # the resumed run names the step and the checkpoint it resumed from
    found = re.search(r"pretrain: resumed from step (\d+) \(([^)]*)\)", resumed)
    assert found and found.group(2).endswith(f"step_{int(found.group(1)):08d}"), resumed[:3000]
    assert _losses(run) == _losses(plain) and len(_losses(run)) == STEPS


def test_gres_gpus_give_two_ranks_per_node(cluster, shards, work):
    one_per_shard = work / "shards_1"           # 4 ranks need at least 4 shards
    _avsiam("shard", *_shard_args(work / "synth", one_per_shard), "--samples-per-shard", "1",
            "--workers", "2", cwd=work)
    run = work / "gres"
    job_id, log = _submit(cluster, "pretrain", "gres",
                          _pretrain_args(one_per_shard, run, steps=2, batch=1), work,
                          "--gres", "gpu:2")
    text = _completed(cluster, job_id, log, "0")
    first = next(line for line in text.splitlines() if line.startswith("[avsiam] job"))
    assert "2 nodes x 2 ranks (SLURM_GPUS_ON_NODE=2)" in first
    assert [step for step, _ in _losses(run)] == [1, 2]
    # a ZeRO checkpoint of a 4-rank data-parallel group: one optimizer shard per rank
    assert len(list(run.rglob("*optim_states.pt"))) == 4


# --- fine-tuning ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finetune_plain(cluster, shards, work, plain):
    _require(COMMANDS["finetune"][0])
    job_id, log = _submit(cluster, "finetune", "ft_plain",
                          _finetune_args(shards, plain, work / "ft_plain"), work)
    _completed(cluster, job_id, log, "0")
    assert (work / "ft_plain" / "model.safetensors").is_file()
    return work / "ft_plain"


@pytest.mark.parametrize("how", ["USR1", "TERM"])
def test_finetuning_stopped_by_the_cluster_requeues_and_resumes_exactly(cluster, shards, work,
                                                                        plain, finetune_plain, how):
    run = work / f"ft_{how}"
    job_id, log = _submit(cluster, "finetune", f"ft_{how}", _finetune_args(shards, plain, run),
                          work)
    reference = _losses(finetune_plain)
    _running_past(cluster, job_id, run, 1)
    assert _last_step(run) < len(reference), "the run ended before it was stopped"
    if how == "USR1":   # the time-limit warning, to the batch shell
        cluster.run("scancel", "--batch", "--signal=USR1", job_id)
    else:               # what a preemption sends: TERM to the step's processes only
        cluster.run("scancel", "--signal=TERM", job_id)
    text = _completed(cluster, job_id, log, "1")
    assert "AttributeError" not in text and "Traceback" not in text
    assert f"finetune: SIG{how} after step" in text
    assert _losses(run) == reference
    assert (run / "model.safetensors").is_file()


def test_a_user_error_is_said_once_and_is_the_jobs_exit_code(cluster, shards, work):
    """A batch larger than the data (the README recipe's old failure): rank 0 says it once, in one
    line; no traceback from any rank or from torchrun; the batch script exits with the step's 2."""
    job_id, log = _submit(cluster, "pretrain", "too_big",
                          _pretrain_args(shards, work / "too_big", batch=100), work)
    [record] = wait_for_jobs(cluster, job_id, JOB_TIMEOUT_S, log=log)
    text = log.read_text()
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0"), text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("avsiam pretrain:")]
    assert len(errors) == 1 and "make no batch" in errors[0], text[-3000:]
    assert "Traceback" not in text and "ChildFailedError" not in text
    assert "ended with exit code 2" in text
