"""A real local SLURM cluster for tests, started once per test module, and helpers to drive jobs.

    from tests.slurm_fixtures import slurm_cluster  # noqa: F401  (a module-scoped fixture)

When the cluster cannot start (not root, slurm-wlm/munge missing, daemons failing) the tests that
use it are skipped with that reason; they never pass without running.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.local import LocalSlurmCluster, SlurmUnavailable

REPO = Path(__file__).resolve().parents[1]
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED")


@pytest.fixture(scope="module")
def slurm_cluster():
    try:
        cluster = LocalSlurmCluster(nodes=2).start()
    except SlurmUnavailable as exc:
        pytest.skip(f"local SLURM cluster unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


def avsiam_submit(cluster: LocalSlurmCluster, *argv: str, cwd: Path, env: dict | None = None,
                  timeout: float = 120) -> str:
    """Run the real `avsiam submit ...` against `cluster`; the job id it prints."""
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", *argv], cwd=cwd,
                          env=cluster.env(env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"avsiam submit failed:\n{proc.stdout}\n{proc.stderr}"
    job_id = proc.stdout.strip().splitlines()[-1]
    assert job_id.isdigit(), f"avsiam submit printed {proc.stdout!r}, not a job id"
    return job_id


def job_records(cluster: LocalSlurmCluster, job_id: str) -> list[dict[str, str]]:
    """`scontrol show job -o` as dicts: one per job, or one per task of an array."""
    out = cluster.run("scontrol", "show", "job", "-o", job_id, check=False, timeout=15)
    records = []
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" in fields:
            records.append(fields)
    return records


def wait_for_jobs(cluster: LocalSlurmCluster, job_id: str, timeout: float,
                  log: Path | None = None) -> list[dict[str, str]]:
    """Wait until every job/array task of `job_id` reached a final state; their records."""
    deadline = time.monotonic() + timeout
    records: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        records = job_records(cluster, job_id)
        if records and all(r.get("JobState") in FINAL_STATES for r in records):
            return records
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    states = [(r.get("JobId"), r.get("JobState"), r.get("Reason")) for r in records]
    raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s: {states}\n{tail}\n"
                         f"{cluster.log_tail()}")


def wait_until(predicate, timeout: float, what: str, period: float = 0.2):
    """Poll `predicate` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
