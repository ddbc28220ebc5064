"""A pool of clip workers that survives its workers: one batch of tasks per worker at a time.

A worker takes a few rows at once (`submit_batch`) and decodes their windows with one ffmpeg
process (`pipeline.clip.process_clips`), sending each row's result as it is made. Unlike a generic
process pool, the parent always knows which rows each worker holds, so a worker that dies (a crash
in native code, the OOM killer, os._exit) or runs past its time limit is killed and replaced: a
row it held alone is reported as failed, and the unfinished rows of a batch are given out again
one per worker, so exactly the row that kills its worker fails and every other row goes on.
Workers are recycled after `recycle_after` tasks to contain leaks. Workers start from a forkserver
that has torch preloaded, so a replacement costs milliseconds.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from pipeline import errors
from pipeline.bounded_process import FORKSERVER_PARENT_ENV
from pipeline.clip import ClipContext, ClipResult, ClipTask, process_clips, warm_up

_PRELOAD = ["pipeline.forkserver_guard", "pipeline.clip", "torch", "torchaudio.compliance.kaldi"]


@dataclass(frozen=True)
class WorkerFailure:
    """A task whose worker died or timed out; `reason` is stored in the row's record."""

    reason: str


@dataclass
class ResourceUse:
    """Memory peaks (KiB) and CPU time of the workers in this run (metrics, never shard bytes)."""

    worker_base_kb: int = 0     # a worker after loading torch, before its first clip
    worker_peak_kb: int = 0     # highest VmHWM of any worker
    ffmpeg_peak_kb: int = 0     # highest VmHWM of any ffmpeg child
    finished_cpu_s: float = 0.0  # CPU of workers that ended (with their ffmpeg/ffprobe children)
    live_cpu_s: dict = field(default_factory=dict)   # latest CPU report of each live worker

    @property
    def worker_cpu_s(self) -> float:
        return self.finished_cpu_s + sum(self.live_cpu_s.values())

    def as_dict(self) -> dict:
        return {"worker_base_kb": self.worker_base_kb, "worker_peak_kb": self.worker_peak_kb,
                "ffmpeg_peak_kb": self.ffmpeg_peak_kb,
                "worker_cpu_s": round(self.worker_cpu_s, 3)}


def _cpu_s() -> float:
    """CPU seconds of this process and its waited children (ffmpeg, ffprobe)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _own_hwm_kb() -> int:
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _worker_main(conn: Connection, context: ClipContext) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    os.setpgid(0, 0)  # own process group with its ffmpeg children: killed together on timeout
    _die_with_main_process(conn)
    warm_up()
    conn.send(("ready", _own_hwm_kb()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        for result in process_clips(message, context):
            try:
                conn.send(("result", result, _own_hwm_kb(), _cpu_s()))
            except (BrokenPipeError, OSError):
                return


def _die_with_main_process(conn: Connection) -> None:
    """SIGKILL this worker's process group (itself and its ffmpeg) as soon as the main process's
    end of `conn` closes, i.e. when the main process ends in any way, SIGKILL included.

    A worker lives in a process group of its own (so a timeout kills it with its ffmpeg), so
    `kill -9 -- -PGID` of the job does not reach it, and its parent is the forkserver, which lives
    as long as any worker does: neither a group kill nor a parent-death signal would end it. A
    thread waits for the hang-up of the connection instead (poll for POLLRDHUP reads nothing, so
    the main thread's messages are untouched)."""
    import select
    import threading

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLRDHUP)
        while True:
            for _, event in poller.poll():
                if event & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                    os.killpg(0, signal.SIGKILL)
                if event & select.POLLNVAL:     # the worker closed its end: it is exiting
                    return

    threading.Thread(target=watch, name="die-with-main-process", daemon=True).start()


@dataclass
class _Worker:
    process: mp.Process
    conn: Connection
    pending: list[tuple[object, ClipTask]] = field(default_factory=list)
    """(tag, task) it holds and has not answered yet, in order."""
    deadline: float = 0.0
    done: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.pending)


@dataclass
class WorkerPool:
    """`submit_batch` tasks to an idle worker, `wait` for finished tasks; use as a context
    manager. A worker may hold a batch for `task_timeout_s` per task."""

    num_workers: int
    context: ClipContext
    task_timeout_s: float
    recycle_after: int = 1000
    usage: ResourceUse = field(default_factory=ResourceUse)

    def __post_init__(self) -> None:
        os.environ[FORKSERVER_PARENT_ENV] = str(os.getpid())   # its forkserver dies with it
        self._mp = mp.get_context("forkserver")
        self._mp.set_forkserver_preload(_PRELOAD)
        self._workers: list[_Worker] = []
        self._done: list[tuple[object, ClipResult | WorkerFailure]] = []
        self._retry: list[tuple[object, ClipTask]] = []     # rows of a lost batch, given out alone

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close(kill=exc[0] is not None)

    # --- public -------------------------------------------------------------------------------
    def idle(self) -> int:
        """Workers free for a new batch (none while rows of a lost batch wait to be redone)."""
        busy = sum(w.busy for w in self._workers)
        return max(0, self.num_workers - busy - len(self._retry))

    def in_flight(self) -> int:
        return sum(len(w.pending) for w in self._workers) + len(self._retry)

    def submit(self, tag: object, task: ClipTask) -> None:
        """Give `task` alone to an idle worker."""
        self.submit_batch([(tag, task)])

    def submit_batch(self, items: list[tuple[object, ClipTask]]) -> None:
        """Give the (tag, task) `items` to one idle worker (starting one if needed), which
        decodes them together; each result comes back from `wait` with its tag."""
        for _ in range(3):
            worker = next((w for w in self._workers if not w.busy), None)
            if worker is None:
                if len(self._workers) >= self.num_workers:
                    raise RuntimeError("submit_batch() without an idle worker")
                worker = self._start()
            try:
                worker.conn.send([task for _, task in items])
            except OSError:          # an idle worker died (e.g. OOM killer): replace it, retry
                worker.process.join()
                self._remove(worker)
                continue
            worker.pending = list(items)
            worker.deadline = time.monotonic() + self.task_timeout_s * len(items)
            return
        raise RuntimeError("worker processes die on start; see the errors above")

    def wait(self, timeout: float) -> list[tuple[object, ClipResult | WorkerFailure]]:
        """Finished tasks (results or failures), waiting up to `timeout` seconds for one."""
        self._give_out_retries()
        busy = [w for w in self._workers if w.busy]
        if busy and not self._done:
            deadline = min(w.deadline for w in busy)
            limit = max(0.0, min(timeout, deadline - time.monotonic()))
            handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
            ready = set(wait(handles, limit))
            for worker in list(self._workers):
                if worker.conn in ready:
                    self._receive(worker)
                if worker.process.sentinel in ready and worker in self._workers:
                    self._bury(worker)
            self._expire()
        self._give_out_retries()
        done, self._done = self._done, []
        return done

    def close(self, kill: bool = False) -> None:
        for worker in self._workers:
            try:
                if kill:
                    os.killpg(worker.process.pid, signal.SIGKILL)
                else:
                    worker.conn.send(None)
            except (OSError, ValueError):
                worker.process.kill()
        for worker in list(self._workers):
            worker.process.join(timeout=None if not kill else 10)
            self._remove(worker)

    # --- internals ----------------------------------------------------------------------------
    def _start(self) -> _Worker:
        parent, child = self._mp.Pipe(duplex=True)
        process = self._mp.Process(target=_worker_main, args=(child, self.context), daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        return worker

    def _receive(self, worker: _Worker) -> None:
        while True:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "ready":
                self.usage.worker_base_kb = max(self.usage.worker_base_kb, message[1])
                continue
            _, result, hwm_kb, cpu_s = message
            usage = self.usage
            usage.worker_peak_kb = max(usage.worker_peak_kb, hwm_kb)
            usage.ffmpeg_peak_kb = max(usage.ffmpeg_peak_kb, result.ffmpeg_max_rss_kb)
            usage.live_cpu_s[worker.process.pid] = cpu_s
            tag, _ = worker.pending.pop(0)
            self._done.append((tag, result))
            worker.done += 1
            if worker.done >= self.recycle_after and not worker.busy:
                self._retire(worker)
                return

    def _retire(self, worker: _Worker) -> None:
        try:
            worker.conn.send(None)
        except OSError:
            pass
        worker.process.join(timeout=30)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        self._remove(worker)

    def _bury(self, worker: _Worker) -> None:
        """A worker process ended on its own: report its task (if any) and forget it. Its
        ffmpeg (same process group) may outlive it, beyond any time limit: kill the group first,
        while the unreaped worker still holds the group's id."""
        self._receive(worker)
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        worker.process.join()
        self._lose(worker, f"{errors.WORKER_DIED}: worker process "
                           f"{_exit_text(worker.process.exitcode)} while making this sample; the "
                           f"worker was replaced")
        self._remove(worker)

    def _expire(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.busy and now > worker.deadline:
                _kill_group(worker.process)
                self._lose(worker, f"{errors.WORKER_TIMEOUT}: no result within "
                                   f"{self.task_timeout_s:g} s; the worker was killed and replaced")
                self._remove(worker)

    def _lose(self, worker: _Worker, reason: str) -> None:
        """The rows a dead or killed worker had not answered: one held alone failed with `reason`;
        those of a batch are redone one per worker (which of them did it is not known)."""
        if len(worker.pending) == 1:
            self._done.append((worker.pending[0][0], WorkerFailure(reason)))
        else:
            self._retry.extend(worker.pending)
        worker.pending = []

    def _give_out_retries(self) -> None:
        while self._retry and (len(self._workers) < self.num_workers or
                               any(not w.busy for w in self._workers)):
            self.submit_batch([self._retry.pop(0)])

    def _remove(self, worker: _Worker) -> None:
        worker.conn.close()
        self._workers.remove(worker)
        self.usage.finished_cpu_s += self.usage.live_cpu_s.pop(worker.process.pid, 0.0)


def _kill_group(process: mp.Process) -> None:
    """SIGKILL a worker and the ffmpeg it may be running (same process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.join()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def default_workers() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
