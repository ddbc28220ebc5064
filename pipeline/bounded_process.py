"""Run a child process with a time limit, bounded output on every pipe, and a memory limit.

The only way `pipeline/` starts ffmpeg/ffprobe (through `pipeline.media`). A child that blocks (a
FIFO, a stalled mount), runs past its deadline or writes more than allowed is killed, and the caller
gets an exception that says which limit was hit. Outputs other than stdout go through extra pipes
(`pipe:N` URLs for ffmpeg), all read concurrently so the child never blocks on a full pipe.

The child dies with the process that started it: it gets SIGKILL as its parent-death signal
(PR_SET_PDEATHSIG), set by util-linux `setpriv --pdeathsig KILL`, which execs `prlimit`, which
execs ffmpeg. The setting survives both execs (the same process all along), so it is ffmpeg itself
that is killed when the worker dies, even by SIGKILL. Where setpriv lacks --pdeathsig (util-linux
before 2.33) a preexec hook sets it instead, at the cost of a full fork per call.
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Mapping

STDOUT = "stdout"
_CHUNK = 1 << 20
_STDERR = "\0stderr"  # internal name of the stderr pipe
_SAMPLE_S = 0.05  # how often the child's peak RSS is read
_PRLIMIT = shutil.which("prlimit")
_SETPRIV = shutil.which("setpriv")
_PR_SET_PDEATHSIG = 1
_PIPE_MAX = 1 << 18
_PIPE_BUDGET = 3 << 18
FORKSERVER_PARENT_ENV = "AVSIAM_FORKSERVER_PARENT"
"""Set by the sharding worker pool to its pid for `pipeline.forkserver_guard`."""
_death_prefix: list[str] | None = None


class ProcessTimeout(Exception):
    """The child ran past its time limit and was killed."""

    def __init__(self, seconds: float, stderr_tail: str):
        super().__init__(f"did not finish within {seconds:g} s")
        self.seconds = seconds
        self.stderr_tail = stderr_tail


class OutputLimitExceeded(Exception):
    """The child wrote more than allowed to one of its outputs and was killed."""

    def __init__(self, name: str, limit: int):
        super().__init__(f"output {name!r} exceeded {limit} bytes")
        self.name = name
        self.limit = limit


@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    outputs: dict[str, bytes]
    stderr_tail: str
    max_rss_kb: int
    """Peak resident memory of the child (VmHWM, sampled; 0 where /proc is missing)."""


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()


def _grow_pipe(fd: int, expected: int, cap: int = _PIPE_MAX) -> None:
    """Let the pipe hold up to `cap` (256 KiB at most; Linux), so the child rarely waits for us to
    read: fewer context switches, and no stalls when the machine is busy. Not more: pipe buffers
    count against the user's pipe-user-pages-soft (64 MiB by default), and past it Linux gives
    every new pipe of the user, DataLoader's included, a single page; a child's pipes together get
    at most `_PIPE_BUDGET` (768 KiB: a node holds ~80 workers)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(max(expected, 65536), cap))
    except (AttributeError, OSError):
        pass


def _with_memory_limit(command: list[str], memory_mb: int) -> list[str]:
    """The command started under RLIMIT_AS by util-linux `prlimit`, which sets the limit and execs
    it: the limit holds from ffmpeg's first instruction, and Popen keeps using vfork (a preexec_fn
    would force a full fork of a worker holding torch, ~100 ms per call)."""
    if memory_mb <= 0:
        return command
    if _PRLIMIT is None:
        raise RuntimeError("the ffmpeg memory limit needs util-linux's `prlimit` (apt-get install "
                           "util-linux), or pass --ffmpeg-memory-mb 0 to run without it")
    return [_PRLIMIT, f"--as={memory_mb << 20}", "--", *command]


def _parent_death_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL --` if this setpriv has the option, else [] (checked once)."""
    global _death_prefix
    if _death_prefix is None:
        works = False
        if _SETPRIV is not None:
            try:
                works = subprocess.run([_SETPRIV, "--pdeathsig", "KILL", "--", "true"],
                                       capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                works = False
        _death_prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if works else []
    return _death_prefix


def die_with_parent(parent: int) -> None:
    """SIGKILL this new process when `parent`, the process that started it, ends; exit at once if
    that already happened. The preexec hook where setpriv lacks --pdeathsig, and the forkserver
    guard."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(125)
    if os.getppid() != parent:
        os._exit(125)


def run_bounded(build_command: Callable[[Mapping[str, str]], list[str]], *,
                outputs: Mapping[str, int], timeout_s: float, memory_mb: int = 0,
                stderr_max_bytes: int = 16384) -> ProcessResult:
    """Run `build_command(urls)` where urls maps each output name to its `pipe:N` URL.

    `outputs` maps output names to their byte limits; STDOUT is fd 1, every other name gets its own
    pipe. Raises ProcessTimeout or OutputLimitExceeded (after killing the child).
    """
    extra = {}
    cap = min(_PIPE_MAX, _PIPE_BUDGET // max(1, len(outputs)))
    try:
        for name in outputs:
            if name != STDOUT:
                extra[name] = os.pipe()
                _grow_pipe(extra[name][0], outputs[name], cap)
        urls = {name: "pipe:1" if name == STDOUT else f"pipe:{extra[name][1]}" for name in outputs}
        death = _parent_death_prefix()
        command = death + _with_memory_limit(build_command(urls), memory_mb)
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if STDOUT in outputs else subprocess.DEVNULL,
            stderr=subprocess.PIPE, pass_fds=tuple(w for _, w in extra.values()),
            preexec_fn=None if death else functools.partial(die_with_parent, os.getpid()))
        if proc.stdout is not None:
            _grow_pipe(proc.stdout.fileno(), outputs[STDOUT], cap)
    finally:
        for _, w in extra.values():
            os.close(w)
    try:
        buffers, stderr, max_rss_kb = _collect(proc, {n: r for n, (r, _) in extra.items()},
                                               outputs, timeout_s, stderr_max_bytes)
    finally:
        for r, _ in extra.values():
            os.close(r)
    return ProcessResult(proc.returncode, {n: bytes(b) for n, b in buffers.items()}, stderr,
                         max_rss_kb)


def _collect(proc: subprocess.Popen, extra_fds: dict[str, int], limits: Mapping[str, int],
             timeout_s: float, stderr_max: int) -> tuple[dict[str, bytearray], str, int]:
    deadline = time.monotonic() + timeout_s
    selector = selectors.DefaultSelector()
    fds = dict(extra_fds)
    if proc.stdout is not None:
        fds[STDOUT] = proc.stdout.fileno()
    fds[_STDERR] = proc.stderr.fileno()
    buffers = {name: bytearray() for name in fds}
    for name, fd in fds.items():
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ, name)
    peak_kb, next_sample = 0, 0.0
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= next_sample:
                peak_kb, next_sample = max(peak_kb, _peak_rss_kb(proc.pid)), now + _SAMPLE_S
            remaining = deadline - now
            if remaining <= 0:
                _kill(proc)
                raise ProcessTimeout(timeout_s, _tail(buffers[_STDERR], stderr_max))
            for key, _ in selector.select(min(remaining, _SAMPLE_S)):
                name = key.data
                try:
                    data = os.read(key.fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(key.fd)
                    continue
                buf = buffers[name]
                buf += data
                if name == _STDERR:
                    if len(buf) > 2 * stderr_max:
                        del buf[:-stderr_max]
                elif len(buf) > limits[name]:
                    _kill(proc)
                    raise OutputLimitExceeded(name, limits[name])
        peak_kb = max(peak_kb, _peak_rss_kb(proc.pid))
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise ProcessTimeout(timeout_s, _tail(buffers[_STDERR], stderr_max)) from None
    finally:
        selector.close()
        if proc.returncode is None:
            _kill(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    stderr = _tail(buffers.pop(_STDERR), stderr_max)
    return buffers, stderr, peak_kb


def _peak_rss_kb(pid: int) -> int:
    """The child's peak resident memory since exec (VmHWM), 0 where /proc is not available.

    getrusage/wait4 cannot give this: Linux counts the forking parent's RSS into a child's
    ru_maxrss at exec. Sampled while the child runs; VmHWM is a high-water mark, so the last
    reading before exit covers everything up to it."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tail(buf: bytearray | bytes, limit: int) -> str:
    return bytes(buf[-limit:]).decode("utf-8", "replace")
