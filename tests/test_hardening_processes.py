"""No process of a sharding job outlives it: SIGKILL of its process group (or of its main process
alone) while ffmpeg is blocked leaves nothing alive 5 s later, and ffmpeg/ffprobe die with the
process that started them, through setpriv's parent-death signal or the preexec fallback."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import REPO, make_clip

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(root: int) -> dict[int, str]:
    """pid -> start time of `root` and all its descendants."""
    kids, found, todo = _children(), {}, [root]
    while todo:
        pid = todo.pop()
        start = _start_time(pid)
        if start is not None:
            found[pid] = start
            todo += kids.get(pid, [])
    return found


def _start_time(pid: int) -> str | None:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError):
        return None


_PF_EXITING = 0x4     # the kernel is tearing the process down (after SIGKILL): it runs no more code


def _alive(processes: dict[int, str]) -> list[str]:
    """The ones still running (same pid and start time, neither a zombie nor already in the
    kernel's exit path, where a large process may spend a moment freeing its memory), with their
    command line."""
    alive = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        state, flags = fields[0], int(fields[6])
        if state != "Z" and not flags & _PF_EXITING and _start_time(pid) == start:
            text = command.decode(errors="replace")
            alive.append(f"{pid} ({state}, flags {flags:#x}): {text[:60]}...{text[-40:]}")
    return alive


def _gone_within(processes: dict[int, str], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (alive := _alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _cleanup(processes: dict[int, str]) -> None:
    for pid, start in processes.items():
        if _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def blocked_job(tmp_path_factory):
    """Clips, a manifest, and a PATH on which `ffmpeg` is the real ffmpeg reading a FIFO that no
    one writes: every decode blocks in open() until the decode timeout."""
    root = tmp_path_factory.mktemp("blocked")
    for i in range(3):
        make_clip(root / "videos" / f"c{i}.mp4", seconds=0.5)
    (root / "m.csv").write_text("id,path\n" + "".join(f"c{i},c{i}.mp4\n" for i in range(3)))
    os.mkfifo(root / "stall.fifo")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ffmpeg"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ffmpeg')} -nostdin -v error -i "
                       f"file:{root / 'stall.fifo'} -f null -\n")
    wrapper.chmod(0o755)
    return root


@pytest.mark.parametrize("kill", ["process group", "main process"])
def test_nothing_of_the_job_survives_sigkill_while_ffmpeg_blocks(blocked_job, tmp_path, kill):
    env = {**os.environ, "PATH": f"{blocked_job / 'bin'}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "shard", "--manifest", str(blocked_job / "m.csv"),
         "--videos", str(blocked_job / "videos"), "--out", str(tmp_path / "out"), "--workers",
         "2", "--no-progress", "--frame-size", "32", "--num-frames", "2", "--decode-timeout",
         "300"], cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    processes: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 240
        while True:
            processes = _tree(job.pid)
            blocked = [p for p in _alive(processes) if "stall.fifo" in p]
            if len(blocked) == 2:          # both workers' ffmpeg wait on the FIFO
                break
            assert job.poll() is None and time.monotonic() < deadline, "ffmpeg never blocked"
            time.sleep(0.05)
        assert len(processes) >= 6, processes   # main, forkserver, 2 workers, 2 ffmpeg (+tracker)
        if kill == "process group":
            os.killpg(job.pid, signal.SIGKILL)
        else:
            os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
        assert _gone_within(processes, 5.0) == []
    finally:
        job.kill()
        job.wait()
        _cleanup(processes)


_START_CHILD = """
import sys
from pipeline import bounded_process
if sys.argv[1] == "preexec":
    bounded_process._death_prefix = []          # as where setpriv lacks --pdeathsig
bounded_process.run_bounded(lambda urls: ["sleep", sys.argv[2]], outputs={}, timeout_s=600,
                            memory_mb=512)
"""


@pytest.mark.parametrize("way", ["setpriv", "preexec"])
def test_ffmpeg_dies_with_the_process_that_started_it(way):
    """The child starts under `[setpriv] prlimit` (the memory limit); whichever sets the
    parent-death signal, it is the final program (here `sleep`) that gets SIGKILL when the
    process that started it is SIGKILLed."""
    marker = f"86.{os.getpid() % 1000}{len(way)}"
    parent = subprocess.Popen([sys.executable, "-c", _START_CHILD, way, marker], cwd=REPO)
    processes: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while not any(p.endswith(f"sleep {marker} ") for p in _alive(processes)):
            assert parent.poll() is None and time.monotonic() < deadline, "the child never ran"
            processes = _tree(parent.pid)
            time.sleep(0.02)
        parent.kill()
        parent.wait()
        assert _gone_within(processes, 5.0) == []
    finally:
        parent.kill()
        parent.wait()
        _cleanup(processes)
