"""Render the batch scripts in cluster/templates/ from typed options.

A template is plain bash with `{{name}}` placeholders; rendering fills every one of them (an unknown
or missing placeholder is an error) and is deterministic: the same options give the same bytes. Site
values (partition, account, paths) come only from the options, never from the templates.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainer.engine.distributed import slurm_port_shell

TEMPLATES = Path(__file__).resolve().parent / "templates"
JobKind = Literal["shard", "pretrain", "finetune"]
KINDS: tuple[JobKind, ...] = ("shard", "pretrain", "finetune")
TRAINING_KINDS = ("pretrain", "finetune")
TEMPLATE = {"shard": "shard.sbatch", "pretrain": "train.sbatch", "finetune": "train.sbatch"}

# What each job's step does with the warning signal (see templates/requeue_on_signal.sh).
_TRAINER_STOP = ("USR1", "the ranks checkpoint together at their next step boundary and exit")
STEP_SIGNAL = {
    "pretrain": _TRAINER_STOP,
    "finetune": _TRAINER_STOP,
    "shard": ("TERM", "the sharder stops; its finished shards are kept and skipped next time"),
}
DEFAULT_OUTPUT = {"shard": "%x-%A_%a.out", "pretrain": "%x-%j.out", "finetune": "%x-%j.out"}
RESEND_SECONDS = 5   # the stop signal again, this often, until the ranks acknowledge it
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# SLURM --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_limit_seconds(value: str) -> int:
    """Seconds in a SLURM --time value; ValueError naming the accepted forms otherwise."""
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(f"--time {value!r}: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM "
                         "or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if c is not None:  # H:M:S
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 60  # M


def _check_word(name: str, value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise ValueError(f"--{name.replace('_', '-')} {value!r}: must be one word without spaces")
    return value


@dataclass(frozen=True, kw_only=True)
class SbatchOptions:
    """The #SBATCH header of a job. None/0 leaves a field to the site's defaults."""

    job_name: str
    output: str                       # file pattern (%x job name, %j job id, %A_%a array task)
    nodes: int = 1
    ntasks_per_node: int = 1
    cpus_per_task: int | None = None
    gpus_per_node: str | None = None  # "[type:]N"; GPUs are asked for by one of these four
    gres: str | None = None           # e.g. "gpu:8" or "gpu:a100:8"
    gpus: str | None = None           # "[type:]N" for the whole job
    gpus_per_task: str | None = None  # "[type:]N"; one task per node here
    time: str | None = None           # SLURM time limit
    partition: str | None = None
    account: str | None = None
    array: str | None = None          # e.g. "0-9" or "0-9%4"
    signal_seconds: int = 90          # USR1 this long before the time limit; 0 = no warning
    extra: tuple[str, ...] = field(default_factory=tuple)  # more flags, e.g. "--mem=64G"

    def __post_init__(self) -> None:
        for name in ("job_name", "output", "partition", "account", "array", "gpus_per_node",
                     "gres", "gpus", "gpus_per_task"):
            value = getattr(self, name)
            if value is not None:
                _check_word(name, value)
        if self.nodes < 1 or self.ntasks_per_node < 1:
            raise ValueError("--nodes and --ntasks-per-node must be at least 1")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError("--cpus-per-task must be at least 1")
        if self.signal_seconds < 0:
            raise ValueError("--signal-seconds cannot be negative")
        if self.time is not None:
            limit = time_limit_seconds(self.time)
            if self.signal_seconds and self.signal_seconds >= limit:
                raise ValueError(f"--signal-seconds {self.signal_seconds} must be shorter than "
                                 f"the time limit {self.time} ({limit} s)")
        for flag in self.extra:
            if not flag.startswith("-") or "\n" in flag:
                raise ValueError(f"--sbatch-arg {flag!r}: give one sbatch flag such as --mem=64G")

    def header(self) -> str:
        """The #SBATCH lines, in a fixed order."""
        flags = [f"--job-name={self.job_name}", f"--nodes={self.nodes}",
                 f"--ntasks-per-node={self.ntasks_per_node}"]
        if self.cpus_per_task is not None:
            flags.append(f"--cpus-per-task={self.cpus_per_task}")
        for name in ("gpus_per_node", "gres", "gpus", "gpus_per_task"):
            value = getattr(self, name)
            if value not in (None, "", "0"):
                flags.append(f"--{name.replace('_', '-')}={value}")
        for name in ("time", "partition", "account", "array"):
            value = getattr(self, name)
            if value is not None:
                flags.append(f"--{name}={value}")
        flags += [f"--output={self.output}", "--open-mode=append", "--requeue"]
        if self.signal_seconds:
            flags.append(f"--signal=B:USR1@{self.signal_seconds}")
        flags += list(self.extra)
        return "\n".join(f"#SBATCH {flag}" for flag in flags)


@dataclass(frozen=True, kw_only=True)
class JobScript:
    """Everything a batch script needs: its kind, header, interpreter and the job's arguments."""

    kind: JobKind
    sbatch: SbatchOptions
    python: str                       # interpreter with the project's requirements (a venv's)
    project_dir: str                  # folder that holds the cluster/ package; put on PYTHONPATH
    job_args: tuple[str, ...] = ()    # arguments of `avsiam shard|pretrain|finetune`
    num_tasks: int | None = None      # shard: the n of "task k of n"
    run_dir: str | None = None        # training: the run folder (stop-request files)
    expect_gpus: int = 0              # training: GPUs per node the flags ask for (0: CPU ranks)
    expect_source: str = ""           # the flag that asks for them

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.kind == "shard" and (self.num_tasks is None or self.num_tasks < 1):
            raise ValueError("a sharding array needs num_tasks >= 1 (--array N)")
        if self.kind in TRAINING_KINDS and not self.run_dir:
            raise ValueError(f"a {self.kind} job needs its run folder (run_dir)")


def render_template(name: str, values: dict[str, str]) -> str:
    """Fill every {{placeholder}} of templates/`name`; KeyError names a missing value."""
    text = (TEMPLATES / name).read_text()
    used = set(_PLACEHOLDER.findall(text))
    missing = used - values.keys()
    if missing:
        raise KeyError(f"template {name} needs values for: {', '.join(sorted(missing))}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render(job: JobScript) -> str:
    """The complete batch script of `job` (self-contained: sbatch stores it for requeues)."""
    signal, effect = STEP_SIGNAL[job.kind]
    requeue = render_template("requeue_on_signal.sh",
                              {"step_signal": signal, "step_signal_effect": effect,
                               "resend_seconds": str(RESEND_SECONDS)}).rstrip("\n")
    values = {
        "sbatch_header": job.sbatch.header(),
        "python": shlex.quote(job.python),
        "project_dir": shlex.quote(job.project_dir),
        "job_args": shlex.join(job.job_args),
        "num_tasks": str(job.num_tasks),
        "requeue_on_signal": requeue,
        "rdzv_port": slurm_port_shell(),      # the port every rank derives (one formula, in Python)
        "command": job.kind,
        "run_dir": shlex.quote(job.run_dir or ""),
        "expect_gpus": str(job.expect_gpus),
        "expect_source": shlex.quote(job.expect_source or "none"),
    }
    text = render_template(TEMPLATE[job.kind], values)
    return "".join(line.rstrip() + "\n" for line in text.splitlines())
