"""Launching engine test processes: torchrun or a single rank, always with a timeout and a clean kill.

Each launch runs in its own session; on timeout or test failure its whole process group (the
launcher and its ranks, nothing else) is killed, so a multi-rank test can never hang the suite.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def command(argv: list[str], nproc: int, module: bool = True) -> list[str]:
    """`python -m torchrun --nproc_per_node N [-m] ...` for N > 1, else plain python."""
    if nproc == 1:
        return [sys.executable, *(["-m"] if module else []), *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *(["-m"] if module else []), *argv]


def start(argv: list[str], nproc: int, log: Path, module: bool = True) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(command(argv, nproc, module), cwd=REPO, env=child_env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for `proc`; kill it on timeout; fail with the log's tail unless it exited 0."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise AssertionError(f"timed out after {timeout} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}:\n{text[-4000:]}")
    return text


def run(argv: list[str], nproc: int, log: Path, timeout: float = 240, module: bool = True) -> str:
    proc = start(argv, nproc, log, module)
    try:
        return finish(proc, log, timeout)
    finally:
        kill(proc)
