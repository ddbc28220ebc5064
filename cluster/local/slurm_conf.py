"""slurm.conf for a throw-away two-node SLURM cluster on 127.0.0.1 (see cluster/local/cluster.py).

Everything the daemons write (state, spool, pid and log files) and the munge socket live under one
folder, so several clusters can run side by side and stopping one leaves no trace elsewhere.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class LocalClusterConfig:
    """What the local cluster looks like; every port and path is explicit."""

    root: Path                      # the temporary folder that holds everything
    ctld_port: int                  # SlurmctldPort
    node_ports: tuple[int, ...]     # one SlurmdPort per node; node names are node1..nodeN
    hostname: str = field(default_factory=socket.gethostname)
    cpus_per_node: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    memory_mb: int = 4000
    partition: str = "debug"
    # Seconds a requeued job waits before it may start again (the credential lifetime, cred_expire).
    # SLURM's default is 120 s, which would make every requeue in the tests wait two minutes; below
    # 5 s SLURM silently falls back to that default (measured with 22.05), hence the minimum.
    requeue_delay_s: int = 5
    # A gpu gres of this many devices per node (0: none). No device is behind it: jobs that ask
    # for --gres=gpu:N get SLURM's GPU variables and run CPU ranks (gloo), as the tests need.
    gres_gpus: int = 0
    # Preemption: jobs of `urgent_partition` (higher PriorityTier, same nodes) preempt those of
    # `partition`, which SLURM signals with SIGTERM, gives `grace_time_s` and then requeues.
    urgent_partition: str = "urgent"
    grace_time_s: int = 60

    def __post_init__(self) -> None:
        if not self.node_ports:
            raise ValueError("a local cluster needs at least one node port")
        if len(set(self.node_ports) | {self.ctld_port}) != len(self.node_ports) + 1:
            raise ValueError(f"ports must differ: ctld {self.ctld_port}, nodes {self.node_ports}")
        if self.requeue_delay_s < 5:
            raise ValueError("requeue_delay_s must be at least 5 s (SLURM ignores shorter ones)")
        if self.gres_gpus < 0 or self.grace_time_s < 0:
            raise ValueError("gres_gpus and grace_time_s cannot be negative")

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(f"node{i + 1}" for i in range(len(self.node_ports)))

    @property
    def first_job_id(self) -> int:
        """Each cluster numbers its jobs in its own block of 100 (from its controller port), so
        that two clusters on one machine do not give jobs the same id, hence the same rendezvous
        port (20000 + job id % 20000): jobs of both would meet at one port and fail."""
        return (self.ctld_port % 190) * 100 + 1

    @property
    def conf_path(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def gres_conf_path(self) -> Path:
        return self.root / "gres.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def pid_file(self, daemon: str) -> Path:
        """Pid file of 'munged', 'slurmctld' or a node name (its slurmd)."""
        name = daemon if daemon in ("munged", "slurmctld") else f"slurmd-{daemon}"
        return self.root / "run" / f"{name}.pid"


def render_slurm_conf(cfg: LocalClusterConfig) -> str:
    """The slurm.conf text: root-run daemons, munge on a private socket, a default partition and
    a higher-priority one over the same nodes whose jobs preempt (requeue) the default's."""
    root = cfg.root
    lines = [
        "# Written by cluster/local; a private test cluster on 127.0.0.1.",
        "ClusterName=avsiamlocal",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={cfg.ctld_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={cfg.munge_socket},cred_expire={cfg.requeue_delay_s}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2,bf_interval=1",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "JobRequeue=1",
        f"FirstJobId={cfg.first_job_id}",
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        "KillWait=5",
        "MinJobAge=600",
        "InactiveLimit=0",
        "SlurmdTimeout=60",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool' / '%n'}",
        f"SlurmctldPidFile={cfg.pid_file('slurmctld')}",
        f"SlurmdPidFile={root / 'run' / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={cfg.log_dir / 'slurmctld.log'}",
        f"SlurmdLogFile={cfg.log_dir / 'slurmd-%n.log'}",
    ]
    gres = f" Gres=gpu:{cfg.gres_gpus}" if cfg.gres_gpus else ""
    if cfg.gres_gpus:
        lines.append("GresTypes=gpu")
    for name, port in zip(cfg.nodes, cfg.node_ports):
        lines.append(f"NodeName={name} NodeHostname={cfg.hostname} NodeAddr=127.0.0.1 Port={port} "
                     f"CPUs={cfg.cpus_per_node} RealMemory={cfg.memory_mb}{gres} State=UNKNOWN")
    nodes = ",".join(cfg.nodes)
    lines.append(f"PartitionName={cfg.partition} Nodes={nodes} Default=YES MaxTime=INFINITE "
                 f"State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={cfg.grace_time_s}")
    lines.append(f"PartitionName={cfg.urgent_partition} Nodes={nodes} MaxTime=INFINITE State=UP "
                 "PriorityTier=2 PreemptMode=OFF")
    return "\n".join(lines) + "\n"


def render_gres_conf(cfg: LocalClusterConfig) -> str:
    """gres.conf: `gres_gpus` GPUs per node on every node. SLURM drops GPUs without device files,
    so each is a character device like /dev/null in the cluster folder (`gpu_device_paths`)."""
    if not cfg.gres_gpus:
        return "# no gres\n"
    return f"Name=gpu File={cfg.root / 'dev'}/gpu[0-{cfg.gres_gpus - 1}]\n"


def gpu_device_paths(cfg: LocalClusterConfig) -> list[Path]:
    return [cfg.root / "dev" / f"gpu{i}" for i in range(cfg.gres_gpus)]


def parse_slurm_conf(root: Path) -> LocalClusterConfig:
    """Read back the config of a cluster written by render_slurm_conf into `root`."""
    path = root / "slurm.conf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} holds no local cluster")
    ctld_port, node_ports, delay, gpus, grace = None, [], 5, 0, 60
    for line in path.read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "SlurmctldPort" in fields:
            ctld_port = int(fields["SlurmctldPort"])
        elif "NodeName" in fields:
            node_ports.append(int(fields["Port"]))
            gpus = int(fields.get("Gres", "gpu:0").rsplit(":", 1)[-1])
        elif "GraceTime" in fields:
            grace = int(fields["GraceTime"])
        elif "AuthInfo" in fields:
            opts = dict(o.split("=", 1) for o in fields["AuthInfo"].split(",") if "=" in o)
            delay = int(opts.get("cred_expire", delay))
    if ctld_port is None or not node_ports:
        raise ValueError(f"{path} names no SlurmctldPort or no node: not written by cluster/local")
    return LocalClusterConfig(root=root, ctld_port=ctld_port, node_ports=tuple(node_ports),
                              requeue_delay_s=delay, gres_gpus=gpus, grace_time_s=grace)


def free_ports(count: int) -> tuple[int, ...]:
    """`count` distinct TCP ports that were free a moment ago (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()
