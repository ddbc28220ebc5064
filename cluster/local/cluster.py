"""A real SLURM cluster on this machine: munged, slurmctld and one slurmd per node on 127.0.0.1.

    with LocalSlurmCluster.started() as cluster:        # raises SlurmUnavailable with the reason
        subprocess.run(["sbatch", "job.sh"], env=cluster.env(), check=True)

Needs root (the daemons run as root and so do the jobs) and Debian's `slurm-wlm` and `munge`.
Each daemon runs in the foreground, in its own session, and is stopped by its pid: by `stop()`,
which also runs at interpreter exit and after a failed start, and by the kernel (SIGTERM on parent
death) when the owning process is killed outright. Every wait is bounded: nothing here can hang.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from cluster.local.slurm_conf import (LocalClusterConfig, free_ports, parse_slurm_conf,
                                      gpu_device_paths, render_gres_conf, render_slurm_conf)

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
INSTALL_HINT = "install them with: apt-get install slurm-wlm munge (make test does it as root)"


class SlurmUnavailable(RuntimeError):
    """The local cluster cannot run here; the message says why and what to do."""


def find_executable(name: str) -> str | None:
    """`name` on PATH or in /usr/sbin (daemons live there and sbin is not always on PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def why_unavailable() -> str | None:
    """The reason a local cluster cannot be started here, or None when it can be tried."""
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (its daemons and jobs run as root)"
    missing = [name for name in DAEMONS + CLIENTS if find_executable(name) is None]
    if missing:
        return f"missing SLURM/munge programs: {', '.join(missing)}; {INSTALL_HINT}"
    return None


class LocalSlurmCluster:
    """Start/stop a private cluster; `env()` is the environment its clients need (SLURM_CONF)."""

    def __init__(self, nodes: int = 2, root: Path | None = None, requeue_delay_s: int = 5,
                 start_timeout_s: float = 60.0, die_with_parent: bool = True, gres_gpus: int = 0,
                 grace_time_s: int = 60):
        """`die_with_parent`: the daemons get SIGTERM if this process dies without stopping them
        (even by SIGKILL); False keeps them running after it exits (`python -m cluster.local`).
        `gres_gpus`: a gpu gres of that many (device-less) GPUs per node; `grace_time_s`: what a
        preempted job of the default partition gets between SIGTERM and SIGKILL."""
        self._own_root = root is None
        self.die_with_parent = die_with_parent
        root = Path(tempfile.mkdtemp(prefix="avsiam-slurm-")) if root is None else Path(root)
        ports = free_ports(nodes + 1)
        self.config = LocalClusterConfig(root=root.resolve(), ctld_port=ports[0],
                                         node_ports=ports[1:], requeue_delay_s=requeue_delay_s,
                                         gres_gpus=gres_gpus, grace_time_s=grace_time_s)
        self.start_timeout_s = start_timeout_s
        self._procs: dict[str, subprocess.Popen] = {}

    @classmethod
    def attach(cls, root: Path) -> "LocalSlurmCluster":
        """The cluster whose files are in `root` (started earlier, e.g. by `python -m cluster.local
        start`), so that it can be stopped; its ports are read back from its slurm.conf."""
        cfg = parse_slurm_conf(Path(root).resolve())
        cluster = cls.__new__(cls)
        cluster._own_root, cluster.config, cluster._procs = False, cfg, {}
        cluster.start_timeout_s, cluster.die_with_parent = 60.0, False
        return cluster

    # ----------------------------------------------------------------------------- lifecycle
    @classmethod
    @contextlib.contextmanager
    def started(cls, **kwargs) -> Iterator["LocalSlurmCluster"]:
        cluster = cls(**kwargs)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()

    def start(self) -> "LocalSlurmCluster":
        """Write the config, start munged, slurmctld and the slurmds; wait until all nodes idle."""
        atexit.register(self.stop)
        try:
            reason = why_unavailable() or _untraversable(self.config.root)
            if reason:
                raise SlurmUnavailable(reason)
            self._write_files()
            self._start_munged()
            self._start_daemon("slurmctld", [find_executable("slurmctld"), "-D", "-f",
                                             str(self.config.conf_path)])
            for node in self.config.nodes:
                self._start_daemon(node, [find_executable("slurmd"), "-D", "-f",
                                          str(self.config.conf_path), "-N", node])
            self._wait_nodes_idle()
        except BaseException as exc:
            logs = self.log_tail()
            self.stop()
            if isinstance(exc, SlurmUnavailable):
                raise SlurmUnavailable(f"{exc}\n{logs}") from None
            raise
        return self

    def stop(self) -> None:
        """Cancel jobs, stop every daemon by pid (TERM, then KILL), kill leftover job processes."""
        if self._running_pids():
            with contextlib.suppress(Exception):
                self._cancel_all_jobs()
        for name in reversed(list(self._daemon_names())):
            self._stop_daemon(name)
        kill_processes_with_env("SLURM_CONF", str(self.config.conf_path))
        atexit.unregister(self.stop)
        if self._own_root:
            shutil.rmtree(self.config.root, ignore_errors=True)

    def __enter__(self) -> "LocalSlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- clients
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) plus SLURM_CONF, with the job's SLURM_* variables removed."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.config.conf_path)
        return env

    def run(self, *argv: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run a SLURM client (`sinfo`, `scontrol`, ...) against this cluster; its stdout."""
        exe = find_executable(argv[0]) or argv[0]
        proc = subprocess.run([exe, *argv[1:]], env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()}")
        return proc.stdout

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "--noheader", "--Node", "--format=%N %t", check=False, timeout=10)
        return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every daemon log, to explain a failure."""
        parts = []
        logs = self.config.log_dir
        for path in sorted([*logs.glob("*.log"), *logs.glob("*.stdout")]):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # ----------------------------------------------------------------------------- internals
    def _write_files(self) -> None:
        cfg = self.config
        for sub in ("state", "spool", "run", "log", "munge"):
            (cfg.root / sub).mkdir(parents=True, exist_ok=True)
        for node in cfg.nodes:
            (cfg.root / "spool" / node).mkdir(exist_ok=True)
        # munged insists that every folder on the way to its socket is traversable by all users.
        for folder in (cfg.root, cfg.root / "munge"):
            folder.chmod(0o755)
        key = cfg.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        cfg.conf_path.write_text(render_slurm_conf(cfg))
        cfg.gres_conf_path.write_text(render_gres_conf(cfg))
        _make_gpu_devices(gpu_device_paths(cfg))

    def _start_munged(self) -> None:
        munge = self.config.root / "munge"
        self._start_daemon("munged", [
            find_executable("munged"), "--foreground", f"--key-file={munge / 'munge.key'}",
            f"--socket={self.config.munge_socket}", f"--pid-file={self.config.pid_file('munged')}",
            f"--log-file={self.config.log_dir / 'munged.log'}", f"--seed-file={munge / 'seed'}"])
        self._wait(lambda: self.config.munge_socket.exists(), "munged to create its socket")

    def _start_daemon(self, name: str, argv: list[str]) -> None:
        guard = _term_on_parent_death if self.die_with_parent else None
        log = open(self.config.log_dir / f"{name}.stdout", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env(),
                                    start_new_session=True, preexec_fn=guard)
        finally:
            log.close()
        self._procs[name] = proc
        # Our own pid file too: the daemon writes one only after its start-up checks pass.
        (self.config.root / "run" / f"{name}.popen.pid").write_text(f"{proc.pid}\n")
        time.sleep(0.2)
        if proc.poll() is not None:
            raise SlurmUnavailable(f"{name} exited at start with code {proc.returncode}")

    def _wait_nodes_idle(self) -> None:
        nodes = set(self.config.nodes)

        def idle() -> bool:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with code {proc.returncode}")
            states = self.node_states()
            return nodes <= states.keys() and all(states[n].startswith("idle") for n in nodes)

        self._wait(idle, f"nodes {', '.join(sorted(nodes))} to be idle in sinfo")

    def _wait(self, ready, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout_s)
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.25)
        raise SlurmUnavailable(f"timed out after {timeout or self.start_timeout_s:.0f} s waiting "
                               f"for {what}")

    def _cancel_all_jobs(self, timeout: float = 30.0) -> None:
        self.run("scancel", "--full", "--user=root", check=False, timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "--noheader", check=False, timeout=10).strip():
                return
            time.sleep(0.5)

    def _daemon_names(self) -> list[str]:
        return ["munged", "slurmctld", *self.config.nodes]

    def _running_pids(self) -> dict[str, int]:
        """Daemons of this cluster still alive, from our Popen handles or the pid files."""
        found = {}
        for name in self._daemon_names():
            proc = self._procs.get(name)
            if proc is not None:
                if proc.poll() is None:
                    found[name] = proc.pid
                continue
            pid = _read_pid(self.config.root / "run" / f"{name}.popen.pid")
            if pid and _process_mentions(pid, self.config.root):
                found[name] = pid
        return found

    def _stop_daemon(self, name: str, timeout: float = 10.0) -> None:
        pid = self._running_pids().get(name)
        if pid is not None:
            _terminate(pid, timeout)
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)


def _untraversable(root: Path) -> str | None:
    """munged refuses a socket below a folder that other users cannot enter: say which one."""
    for folder in root.parents:
        if folder.exists() and not folder.stat().st_mode & 0o001:
            return (f"munged needs every folder above its socket to be enterable by all users; "
                    f"{folder} is not (chmod o+x it, or start the cluster in another folder)")
    return None


def _make_gpu_devices(paths: list[Path]) -> None:
    """Character devices with /dev/null's numbers: what SLURM needs behind a gpu gres (no GPU)."""
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))


def _term_on_parent_death() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _process_mentions(pid: int, root: Path) -> bool:
    """Whether process `pid` is one of ours: its command line names the cluster folder."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return str(root).encode() in cmdline


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, wait up to `timeout` s, then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def kill_processes_with_env(key: str, value: str) -> list[int]:
    """SIGKILL left-over job processes of one cluster: slurmstepd or SLURM job processes whose
    environment has key=value (so a user's shell that merely exported SLURM_CONF is spared)."""
    needle = f"{key}={value}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        in_job = comm == "slurmstepd" or any(v.startswith(b"SLURM_JOB_ID=") for v in environ)
        if needle in environ and in_job:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed
