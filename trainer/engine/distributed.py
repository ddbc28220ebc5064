"""Who am I in the job: rank, world size and local rank from torchrun or SLURM, then process groups.

Launchers, in order of precedence:
- torchrun (or any launcher that exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT);
- SLURM, one task per device (`srun --ntasks-per-node=G`): SLURM_PROCID / SLURM_STEP_NUM_TASKS (or
  SLURM_NTASKS) / SLURM_LOCALID; the head is the first host of SLURM_JOB_NODELIST and the port is
  derived from the job id, so every task computes the same address without talking to the others;
- nothing: one process on 127.0.0.1 with a free port.
CPU runs use DeepSpeed's CPU accelerator and gloo; CUDA runs use NCCL with one device per local rank.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """The launch environment of this process."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | single


@dataclass(frozen=True)
class DistContext:
    """An initialised process group and this rank's device."""

    env: DistEnv
    device_type: str  # cpu | cuda
    backend: str      # gloo | nccl

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def device(self):
        import torch
        return torch.device("cuda", self.env.local_rank) if self.device_type == "cuda" else torch.device("cpu")


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables (see the module docstring); never talks to other processes."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                       local_rank=int(env.get("LOCAL_RANK", "0")),
                       master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=int(env.get("MASTER_PORT", "29500")), launcher="torchrun")
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if "SLURM_PROCID" in env and tasks > 1:
        nodelist = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", ""))
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(rank=int(env["SLURM_PROCID"]), world_size=tasks,
                       local_rank=int(env.get("SLURM_LOCALID", "0")),
                       master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
                       master_port=int(env.get("MASTER_PORT") or slurm_port(job_id)), launcher="slurm")
    return DistEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1",
                   master_port=int(env.get("MASTER_PORT") or free_port()), launcher="single")


def first_host(nodelist: str) -> str:
    """First host of a SLURM hostlist: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read a host from SLURM nodelist {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


def slurm_port(job_id: int) -> int:
    """A port every task of a job derives alike, spread over 20000-39999 by job id."""
    return SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN


def slurm_port_shell(job_id_var: str = "SLURM_JOB_ID") -> str:
    """`slurm_port` as a bash arithmetic expression (rendered into the batch scripts)."""
    return f"$(({SLURM_PORT_BASE} + {job_id_var} % {SLURM_PORT_SPAN}))"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_device_type(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Initialise torch.distributed through DeepSpeed for this process; idempotent."""
    env = detect_env()
    device_type = resolve_device_type(device)
    if device_type == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"   # before DeepSpeed picks its accelerator
    for key, value in (("RANK", env.rank), ("WORLD_SIZE", env.world_size), ("LOCAL_RANK", env.local_rank),
                       ("MASTER_ADDR", env.master_addr), ("MASTER_PORT", env.master_port)):
        os.environ[key] = str(value)
    import torch
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no CUDA device is visible; use device=cpu or auto")
        torch.cuda.set_device(env.local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    from .quiet import library_prints
    with library_prints():              # DeepSpeed's "... built successfully"
        import deepspeed
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                       timeout=timedelta(seconds=timeout_s))
    return DistContext(env=env, device_type=device_type, backend=backend)


def run_on_ranks(device: str, body: Callable[[DistContext], T]) -> T:
    """`body(ctx)` between `init_distributed(device)` and `shutdown()`, which runs even on errors."""
    ctx = init_distributed(device)
    try:
        return body(ctx)
    finally:
        shutdown()


def on_main_rank(is_main: bool, work: Callable[[], T]) -> T | None:
    """Run `work` on rank 0 only, then meet every rank. If it failed there, every rank raises
    (rank 0 its own error, the others one naming it) instead of waiting in a barrier for a rank
    that will never arrive. Returns work's result on rank 0, None elsewhere."""
    import torch.distributed as dist

    result, error, failure = None, None, None
    if is_main:
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            failure, error = exc, f"{type(exc).__name__}: {exc}"
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise RuntimeError(f"rank 0 failed, so this rank stops too: {error}")
    return result


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Destroy the process groups through DeepSpeed, which also drops the groups it cached: a later
    run in this process (tests, notebooks) starts clean."""
    import torch.distributed as dist
    if dist.is_initialized():
        import deepspeed.comm
        deepspeed.comm.destroy_process_group()
