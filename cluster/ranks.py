"""Ranks per node (one per GPU) of a SLURM job, from whatever the site uses to hand out GPUs.

At submit time, from the flags (`--gpus-per-node [type:]N`, `--gres=gpu[:type]:N`, `--gpus N` over
the nodes, `--gpus-per-task N` with one task per node), also when they come through `--sbatch-arg`:
`requested_gpus_per_node`. At run time, in the batch shell, `python -m cluster.ranks` prints
"COUNT HOW" from the first of these that names a count:

    SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE, SLURM_JOB_GPUS / SLURM_STEP_GPUS (a list of device
    indices), CUDA_VISIBLE_DEVICES, and as the last resort `nvidia-smi -L`.

None names one: one CPU rank per node, unless the job asked for GPUs (`--expect N`), which then
stops with a message (exit 2) instead of silently training on the CPU.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

# One gres entry: "gpu", "gpu:8", "gpu:a100:8", "gpu:a100:8(S:0-1)"; other gres (shard, mps) skipped.
_GRES = re.compile(r"^gpu(?::(?P<type>[^:(]+))??(?::(?P<count>\d+))?(?:\(.*\))?$")
_TYPED_COUNT = re.compile(r"^(?:[^:]+:)?(\d+)$")      # "[type:]N"
RUNTIME_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS",
                     "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
NO_DEVICE_VALUES = ("", "NoDevFiles", "none", "-1")


@dataclass(frozen=True)
class RankCount:
    """Ranks to start on each node and where that number came from (for the job's first log line)."""

    per_node: int
    source: str

    def line(self) -> str:
        return f"{self.per_node} {self.source}"


class NoGpuFound(RuntimeError):
    """A job that asked for GPUs finds none on its node."""


def count_typed(value: str, what: str) -> int:
    """'8' or 'a100:8' -> 8; several comma-separated entries are summed ('a100:2,v100:2' -> 4)."""
    total = 0
    for part in str(value).split(","):
        match = _TYPED_COUNT.match(part.strip())
        if not match:
            raise ValueError(f"{what} {value!r}: give a GPU count, optionally with a type "
                             "(8 or a100:8)")
        total += int(match.group(1))
    return total


def gpus_in_gres(gres: str) -> int | None:
    """GPUs per node named by a --gres value ('gpu:a100:8,shard:2' -> 8); None if it names none."""
    found = None
    for entry in gres.split(","):
        entry = entry.strip()
        if entry == "gpu" or entry.startswith("gpu:") or entry.startswith("gpu("):
            match = _GRES.match(entry)
            if not match:
                raise ValueError(f"--gres {gres!r}: write gpu:N or gpu:TYPE:N")
            found = (found or 0) + int(match.group("count") or 1)
    return found


def count_devices(value: str) -> int:
    """Entries of a device list ('0,1,3' -> 3, 'GPU-uuid1,GPU-uuid2' -> 2); 0 for none."""
    if value.strip() in NO_DEVICE_VALUES:
        return 0
    return len([v for v in value.split(",") if v.strip()])


def flags_in(extra: Sequence[str]) -> dict[str, str]:
    """GPU flags passed through --sbatch-arg ('--gres=gpu:8', '--gpus=16', ...) by name."""
    names = {"--gres": "gres", "--gpus": "gpus", "-G": "gpus", "--gpus-per-node": "gpus_per_node",
             "--gpus-per-task": "gpus_per_task"}
    found = {}
    for flag in extra:
        name, sep, value = flag.partition("=")
        if sep and name in names:
            found[names[name]] = value
    return found


def requested_gpus_per_node(*, nodes: int = 1, ntasks_per_node: int = 1,
                            gpus_per_node: str | int | None = None, gres: str | None = None,
                            gpus: str | int | None = None, gpus_per_task: str | int | None = None,
                            extra: Sequence[str] = ()) -> RankCount | None:
    """The GPUs per node the submit flags ask for (None: no GPU asked). ValueError on a count that
    cannot be split evenly over the nodes or on contradicting flags."""
    given = {k: v for k, v in (("gpus_per_node", gpus_per_node), ("gres", gres), ("gpus", gpus),
                               ("gpus_per_task", gpus_per_task)) if v not in (None, "", 0, "0")}
    for key, value in flags_in(extra).items():
        given.setdefault(key, value)
    counts: dict[str, int] = {}
    if "gpus_per_node" in given:
        counts["--gpus-per-node"] = count_typed(given["gpus_per_node"], "--gpus-per-node")
    if "gres" in given:
        in_gres = gpus_in_gres(str(given["gres"]))
        if in_gres is not None:
            counts["--gres"] = in_gres
    if "gpus" in given:
        total = count_typed(given["gpus"], "--gpus")
        if total % nodes:
            raise ValueError(f"--gpus {given['gpus']} cannot be split evenly over --nodes {nodes}: "
                             "use --gpus-per-node N (the GPUs of one node)")
        counts["--gpus"] = total // nodes
    if "gpus_per_task" in given:
        counts["--gpus-per-task"] = count_typed(given["gpus_per_task"], "--gpus-per-task") \
            * ntasks_per_node
    if not counts:
        return None
    if len(set(counts.values())) > 1:
        named = ", ".join(f"{flag} -> {n} per node" for flag, n in counts.items())
        raise ValueError(f"the GPU flags disagree ({named}): give only one of them")
    flag, per_node = next(iter(counts.items()))
    return RankCount(per_node, f"{flag} {given[flag[2:].replace('-', '_')]}")


def nvidia_smi_count(timeout_s: float = 20.0) -> int | None:
    """GPUs `nvidia-smi -L` lists; None when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU "))


def ranks_on_this_node(environ: Mapping[str, str] | None = None, *, expect: int = 0,
                       expect_source: str = "",
                       nvidia_smi: Callable[[], int | None] = nvidia_smi_count) -> RankCount:
    """Ranks this node starts (see the module docstring for the order); NoGpuFound when the job
    asked for `expect` > 0 GPUs and none is found."""
    env = os.environ if environ is None else environ
    for name in RUNTIME_VARIABLES:
        value = env.get(name)
        if value is None or value.strip() in NO_DEVICE_VALUES:
            continue
        if name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
            count = count_typed(value, name)
        else:
            count = count_devices(value)
        if count > 0:
            return RankCount(count, f"{name}={value}")
    count = nvidia_smi()
    if count:
        return RankCount(count, "nvidia-smi -L")
    if expect > 0:
        asked = f" ({expect_source})" if expect_source else ""
        raise NoGpuFound(
            f"this job asked for {expect} GPUs per node{asked} but finds none on "
            f"{env.get('SLURMD_NODENAME') or socket.gethostname()}: none of "
            f"{', '.join(RUNTIME_VARIABLES)} is set and nvidia-smi lists no GPU. Submit to a "
            "partition that gives GPUs (--partition), or without GPU flags for one CPU rank per node")
    return RankCount(1, "no GPU asked for or found: one CPU rank per node")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.ranks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expect", type=int, default=0, help="GPUs per node the job asked for")
    parser.add_argument("--expect-source", default="", help="the flag that asked for them")
    args = parser.parse_args(argv)
    try:
        count = ranks_on_this_node(expect=args.expect, expect_source=args.expect_source)
    except (NoGpuFound, ValueError) as exc:
        print(f"[avsiam] {exc}", file=sys.stderr)
        return 2
    print(count.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
