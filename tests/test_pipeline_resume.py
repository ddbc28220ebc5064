"""SIGKILL the sharding job at several points and re-run: the result equals an uninterrupted run,
byte for byte (no duplicate, no lost row)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.cli import main as cli
from shards import format as fmt
from fixtures import REPO, shard_args, snapshot, synth_segments

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    summary, rows = synth_segments(root, clips=10, classes=2, seed=3)
    manifest = Path(summary["balanced_train_csv"]).with_name("all.csv")
    rows.insert(4, 'gone0001, 0, 2, ""')          # a failed row in shard 1
    manifest.write_text("# x\n# y\n# z\n" + "\n".join(rows) + "\n")
    return dict(manifest=manifest, labels=Path(summary["labels_csv"]),
                videos=Path(summary["videos_dir"]), root=root)


def _args(dataset, out: Path) -> list[str]:
    return shard_args(dataset["manifest"], dataset["labels"], dataset["videos"], out,
                      "--samples-per-shard", "3", workers=1)


def _run_and_kill(args: list[str], ready, timeout: float = 120.0,
                  sig: signal.Signals = signal.SIGKILL) -> None:
    """Start `avsiam shard` in its own process group; once ready() is true, SIGKILL the whole
    group (or send `sig` to the job's main process, as SLURM does before a time limit)."""
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the job finished before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.005)
    finally:
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(sig)
        proc.wait(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig)


def test_sigkill_at_any_point_then_rerun_equals_uninterrupted_run(dataset, tmp_path):
    reference = tmp_path / "reference"
    assert cli(_args(dataset, reference)) == 0
    out = tmp_path / "killed"
    args = _args(dataset, out)
    files = [fmt.ShardFiles.of(out, "train", k) for k in range(4)]

    # 1. right after the plan is written, before any sample
    _run_and_kill(args, lambda: (out / fmt.MANIFEST_NAME).exists())
    # 2. as soon as the first shard is committed
    _run_and_kill(args, lambda: files[0].stats.exists())
    assert files[0].stats.exists() and not (out / fmt.DATASET_JSON).exists()
    # 3. in the middle of a shard: a temporary tar written by THIS run holds samples, no stats
    def mid_shard():
        began = time.time() - 0.01
        def ready() -> bool:
            for f in files[1:]:
                for temp in out.glob(f.tar.name + ".tmp-*"):   # this writer's: host-pid-random
                    try:
                        info = temp.stat()
                    except FileNotFoundError:
                        continue
                    if not f.stats.exists() and info.st_mtime >= began and \
                            info.st_size > 10240:
                        return True
            return False
        return ready
    _run_and_kill(args, mid_shard())
    assert not all(f.stats.exists() for f in files)
    leftovers = [p for p in out.iterdir() if ".tmp-" in p.name]
    assert leftovers, "the kill left no partial shard behind; the test did not test resume"
    # 4. SIGTERM (SLURM's time-limit warning) in the middle of a shard: exits 143 promptly,
    # deleting its own temporary tar; the killed run's stale one is gone too (removed by this run)
    _run_and_kill(args, mid_shard(), sig=signal.SIGTERM)
    assert not all(f.stats.exists() for f in files)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]

    assert cli(args) == 0
    assert snapshot(out) == snapshot(reference)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert cli(["verify", "--out", str(out)]) == 0
