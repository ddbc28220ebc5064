"""Runs that meet on one --out: two real `avsiam shard` processes started together, staggered, and
one SIGKILLed right after the other commits, each ending byte for byte as one uninterrupted run;
stale temporary files removed; committed shards damaged afterwards redone; the locks themselves."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.cli import main as cli
from pipeline.locks import FileLock
from pipeline.output_files import OutputError
from shards import format as fmt
from fixtures import REPO, shard_args, synth_segments

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]
NUM_SHARDS = 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    summary, rows = synth_segments(root, clips=14, classes=2, seed=5)
    manifest = root / "segments.csv"
    manifest.write_text("# a\n# b\n# c\n" + "\n".join(rows) + "\n")
    data = dict(manifest=manifest, labels=Path(summary["labels_csv"]),
                videos=Path(summary["videos_dir"]))
    reference = root / "reference"
    assert cli(_args(data, reference)) == 0
    data["reference"], data["reference_dir"] = _folder(reference), reference
    assert sum(name.endswith(".tar") for name in data["reference"]) == NUM_SHARDS
    return data


def _args(data, out: Path) -> list[str]:
    return shard_args(data["manifest"], data["labels"], data["videos"], out,
                      "--samples-per-shard", "2", workers=1)


def _folder(out: Path) -> dict[str, bytes]:
    """Every file of the folder itself (shards, records, stats, plan, dataset.json, and any
    leftover), not the logs/ and locks/ folders."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _start(data, out: Path, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *_args(data, out)], cwd=REPO,
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    handle.close()
    return proc


def _events(out: Path) -> list[dict]:
    path = out / "logs" / "shard-task0000-of-0001.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def _wait_all(*procs: subprocess.Popen, timeout: float = 300) -> list[int]:
    return [proc.wait(timeout=timeout) for proc in procs]


def _check_one_run(data, out: Path, pids: set[int]) -> None:
    """The folder equals one uninterrupted run; every shard was committed exactly once and
    dataset.json written exactly once across the runs."""
    assert _folder(out) == data["reference"]
    events = _events(out)
    commits = sorted(e["shard"] for e in events if e["event"] == "shard")
    assert commits == list(range(NUM_SHARDS)), events
    written = [e for e in events if e["event"] == "dataset_json" and e["written"]]
    assert len(written) == 1 and written[0]["pid"] in pids, events


def test_two_runs_started_together_equal_one_run(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # leftovers of writers that died on other hosts / older versions: removed by the next run
    for name in ("train-000001.tar.tmp-otherhost-4242-0badc0de", "train-000003.stats.json.tmp",
                 "dataset.json.tmp-otherhost-4242-0badc0de"):
        (out / name).write_bytes(b"stale")
    a = _start(dataset, out, tmp_path / "a.log")
    b = _start(dataset, out, tmp_path / "b.log")
    assert _wait_all(a, b) == [0, 0], (tmp_path / "a.log").read_text() + \
        (tmp_path / "b.log").read_text()
    _check_one_run(dataset, out, {a.pid, b.pid})


def test_a_run_started_while_another_runs_shares_the_work(dataset, tmp_path):
    out = tmp_path / "out"
    first = _start(dataset, out, tmp_path / "a.log")
    deadline = time.monotonic() + 240
    while not (out / "train-000000.stats.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, "first shard never came"
        time.sleep(0.01)
    second = _start(dataset, out, tmp_path / "b.log")
    assert _wait_all(first, second) == [0, 0], (tmp_path / "b.log").read_text()
    _check_one_run(dataset, out, {first.pid, second.pid})


def test_a_run_sigkilled_right_after_the_other_commits(dataset, tmp_path):
    """The survivor waits for the shard the killed run held (the kernel releases its lock),
    redoes it, and the folder is that of one run; a plain re-run then changes nothing."""
    out = tmp_path / "out"
    procs = [_start(dataset, out, tmp_path / f"{i}.log") for i in range(2)]
    deadline = time.monotonic() + 240
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "never reached: one commit while the other writes"
        assert all(p.poll() is None for p in procs), "a run ended before the kill point"
        committers = {e["pid"] for e in _events(out) if e["event"] == "shard"}
        for winner, loser in (procs, procs[::-1]):
            writing = any(f"-{loser.pid}-" in p.name for p in out.glob("*.tar.tmp-*"))
            if winner.pid in committers and writing:
                victim, survivor = loser, winner
                break
        time.sleep(0.005)
    os.killpg(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert survivor.wait(timeout=300) == 0
    assert _folder(out) == dataset["reference"]
    assert cli(_args(dataset, out)) == 0
    assert _folder(out) == dataset["reference"]


def test_damaged_commits_are_redone(dataset, tmp_path, capsys):
    """A 0-byte or cut-off stats file, or a tar deleted or truncated after its commit, makes the
    shard uncommitted: a plain re-run redoes it (no traceback) and the folder is whole again."""
    out = tmp_path / "out"
    out.mkdir()
    for name, data in dataset["reference"].items():
        (out / name).write_bytes(data)
    files = [fmt.ShardFiles.of(out, "train", k) for k in range(NUM_SHARDS)]
    files[0].stats.write_bytes(b"")
    files[1].stats.write_bytes(files[1].stats.read_bytes()[:40])
    files[2].tar.unlink()
    with open(files[3].tar, "r+b") as handle:
        handle.truncate(files[3].tar.stat().st_size - 10240)
    (out / fmt.DATASET_JSON).unlink()
    capsys.readouterr()
    assert cli(["stats", "--out", str(out)]) == 2
    assert "4 shard(s) not committed" in capsys.readouterr().err
    assert cli(_args(dataset, out)) == 0
    assert "4 shard(s) written, 3 already committed" in capsys.readouterr().out
    assert _folder(out) == dataset["reference"]


_HOLD = """
import sys, time
from pipeline.locks import FileLock
lock = FileLock(sys.argv[1])
assert lock.try_acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        lock = FileLock(path)
        assert not lock.try_acquire()
        assert f"pid {holder.pid}" in lock.holder()
        holder.kill()               # SIGKILL: no clean-up runs, the kernel releases the flock
        holder.wait()
        lock.acquire(poll_s=0.05)
        assert lock.held and not FileLock(path).try_acquire()   # one holder, also in a process
        lock.check()
        path.unlink()                  # someone deletes locks/: the holder notices at commit
        with pytest.raises(OutputError, match="deleted while this run held it"):
            lock.check()
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_waits_then_redoes_a_shard_whose_holder_died(dataset, tmp_path):
    """A shard locked by another process is left to it; once that process dies without a
    commit, the run that waited writes it."""
    out = tmp_path / "out"
    shutil.copytree(dataset["reference_dir"], out)
    files = fmt.ShardFiles.of(out, "train", 2)
    for path in (files.stats, files.tar, files.record, out / fmt.DATASET_JSON):
        path.unlink()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD,
                               str(out / "locks" / "train-000002.lock")],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    run = _start(dataset, out, tmp_path / "run.log")
    deadline = time.monotonic() + 240
    while not any(e["event"] == "wait" for e in _events(out)):
        assert run.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "run.log").read_text()
        time.sleep(0.05)
    assert not files.stats.exists()
    holder.kill()
    holder.wait()
    assert run.wait(timeout=300) == 0
    assert "is being written by" in (tmp_path / "run.log").read_text()
    assert _folder(out) == dataset["reference"]


def test_a_filesystem_without_flock_stops_the_run_in_one_line(dataset, tmp_path, monkeypatch,
                                                               capsys):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)       # as on Lustre mounted without -o flock
    assert cli(_args(dataset, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"avsiam shard: {tmp_path / 'out'}: its filesystem does not support "
                          f"file locks") and "Lustre: -o flock" in err and "Traceback" not in err
