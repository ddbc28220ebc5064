"""`avsiam submit shard|pretrain|finetune`: render a batch script and submit it with sbatch.

    avsiam submit shard --array 64 --cpus-per-task 16 --time 12:00:00 -- \\
        --manifest balanced.csv --labels class_labels_indices.csv --videos clips/ --out shards/
    avsiam submit pretrain --nodes 8 --gpus-per-node 8 --cpus-per-task 64 --time 2-00:00:00 -- \\
        --config avsiam_large out_dir=runs/large data.train=shards/
    avsiam submit finetune --nodes 1 --gres gpu:8 -- --config as2m init.checkpoint=base.safetensors ...

Prints the job id on stdout (so `jid=$(avsiam submit ...)` works); `--dry-run` prints the script and
submits nothing. Arguments after `--` go to `avsiam shard|pretrain|finetune` inside the job. GPUs
may be asked for with --gpus-per-node, --gres gpu[:type]:N, --gpus or --gpus-per-task (also through
--sbatch-arg); each node starts one rank per GPU it gets (cluster/ranks.py).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cluster.ranks import requested_gpus_per_node
from cluster.sbatch_script import DEFAULT_OUTPUT, TRAINING_KINDS, JobScript, SbatchOptions, render

PACKAGE_DIR = Path(__file__).resolve().parents[1]
KIND_HELP = (("shard", "a sharding job array: task k of n shards its share"),
             ("pretrain", "a multi-node DeepSpeed pretraining job (torchrun)"),
             ("finetune", "a multi-node DeepSpeed fine-tuning job (torchrun)"))


def default_project_dir(cwd: Path | None = None) -> Path:
    """The git checkout `avsiam submit` runs in, when it is an avsiam checkout (it holds
    cluster/cli.py); else the folder of the installed packages."""
    cwd = Path.cwd() if cwd is None else cwd
    git = shutil.which("git")
    if git is not None:
        try:
            proc = subprocess.run([git, "rev-parse", "--show-toplevel"], cwd=cwd,
                                  capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc = None
        if proc is not None and proc.returncode == 0:
            top = Path(proc.stdout.strip())
            if (top / "cluster" / "cli.py").is_file():
                return top
    return PACKAGE_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    kinds = parser.add_subparsers(dest="kind", required=True,
                                  metavar="{" + ",".join(k for k, _ in KIND_HELP) + "}")
    for kind, help_text in KIND_HELP:
        sub = kinds.add_parser(kind, help=help_text, description=help_text,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _add_job_options(sub, kind)


def _add_job_options(parser: argparse.ArgumentParser, kind: str) -> None:
    slurm = parser.add_argument_group("SLURM resources (left out: the site's defaults)")
    slurm.add_argument("--partition", help="partition (-p)")
    slurm.add_argument("--account", help="account to charge (-A)")
    slurm.add_argument("--time", help="time limit per run, e.g. 12:00:00 or 2-00:00:00")
    if kind in TRAINING_KINDS:
        slurm.add_argument("--nodes", type=int, default=1, help="nodes (one srun task each)")
        slurm.add_argument("--gpus-per-node", metavar="[TYPE:]N",
                           help="GPUs per node = ranks per node (none: one CPU rank per node)")
        slurm.add_argument("--gres", metavar="gpu[:TYPE]:N", help="generic resources per node, "
                           "e.g. gpu:8 or gpu:a100:8 (instead of --gpus-per-node)")
        slurm.add_argument("--gpus", metavar="[TYPE:]N",
                           help="GPUs of the whole job, split evenly over the nodes")
        slurm.add_argument("--gpus-per-task", metavar="[TYPE:]N",
                           help="GPUs per task (one task per node here)")
    else:
        slurm.add_argument("--array", type=int, metavar="N", required=True,
                           help="number of array tasks (task k of N)")
        slurm.add_argument("--max-running", type=int, metavar="M",
                           help="run at most M array tasks at once")
    slurm.add_argument("--cpus-per-task", type=int,
                       help="CPUs per task" + (" (the sharder's --workers)" if kind == "shard" else
                                               " (per node: data loading for all its ranks)"))
    slurm.add_argument("--job-name", default=f"avsiam-{kind}", help="job name")
    slurm.add_argument("--output", default=DEFAULT_OUTPUT[kind],
                       help="log file pattern, appended to across requeues")
    slurm.add_argument("--signal-seconds", type=int, default=90,
                       help="send the warning signal (USR1) this long before the time limit; the "
                       "job then stops cleanly and requeues itself (0: no warning)")
    slurm.add_argument("--sbatch-arg", action="append", default=[], metavar="FLAG",
                       help="one more sbatch flag, e.g. --sbatch-arg=--mem=64G (repeatable)")
    run = parser.add_argument_group("job")
    run.add_argument("--python", default=sys.executable,
                     help="python of the project's environment on the compute nodes")
    run.add_argument("--project-dir", default=None,
                     help="folder that holds the avsiam packages, put on PYTHONPATH (default: the "
                     "git checkout this runs in, else the installed package's folder)")
    run.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    run.add_argument("--save-script", type=Path, help="also write the script to this file")
    run.add_argument("job_args", nargs=argparse.REMAINDER,
                     help=f"after --: arguments of `avsiam {kind}` inside the job")


def run_folder(kind: str, job_args: list[str], workdir: Path) -> Path:
    """The absolute run folder of the job (its stop-request files live there), from its config as
    the job will build it; the config is checked here, before the queue (ValueError)."""
    from cluster.job_config import check_job_config
    config = check_job_config(kind, job_args)
    if config is None:
        raise ValueError(f"give the job's arguments after --, e.g. -- --config tiny_cpu "
                         f"data.train=SHARDS (as for avsiam {kind})")
    out = Path(config.out_dir).expanduser()
    return out if out.is_absolute() else Path(os.path.normpath(workdir / out))


def job_from_args(args: argparse.Namespace, cwd: Path | None = None) -> JobScript:
    """The typed job description of the command line (ValueError on a bad combination)."""
    kind, cwd = args.kind, Path.cwd() if cwd is None else cwd
    job_args = list(args.job_args)
    if job_args[:1] == ["--"]:
        job_args = job_args[1:]
    array, nodes = None, getattr(args, "nodes", 1)
    gpu_flags = {name: getattr(args, name, None)
                 for name in ("gpus_per_node", "gres", "gpus", "gpus_per_task")}
    if kind == "shard":
        if args.array < 1:
            raise ValueError("--array N needs N >= 1 array tasks")
        if args.max_running is not None and args.max_running < 1:
            raise ValueError("--max-running M needs M >= 1")
        array = f"0-{args.array - 1}" + (f"%{args.max_running}" if args.max_running else "")
    sbatch = SbatchOptions(
        job_name=args.job_name, output=args.output, nodes=nodes,
        cpus_per_task=args.cpus_per_task, **gpu_flags,
        time=args.time, partition=args.partition, account=args.account, array=array,
        signal_seconds=args.signal_seconds, extra=tuple(args.sbatch_arg))
    training = {}
    if kind in TRAINING_KINDS:
        asked = requested_gpus_per_node(nodes=nodes, extra=sbatch.extra, **gpu_flags)
        chdir = next((f.split("=", 1)[1] for f in sbatch.extra if f.startswith("--chdir=")), None)
        training = {"run_dir": str(run_folder(kind, job_args, cwd / chdir if chdir else cwd)),
                    "expect_gpus": asked.per_node if asked else 0,
                    "expect_source": asked.source if asked else ""}
    project_dir = args.project_dir or str(default_project_dir(cwd))
    return JobScript(kind=kind, sbatch=sbatch, python=args.python, project_dir=project_dir,
                     job_args=tuple(job_args), num_tasks=args.array if kind == "shard" else None,
                     **training)


def submit(script: str, timeout_s: float = 60.0) -> str:
    """sbatch the script (given on stdin); the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise RuntimeError("sbatch not found: run this on a SLURM login node (or --dry-run)")
    proc = subprocess.run([sbatch, "--parsable"], input=script, capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch refused the job ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def main(args: argparse.Namespace) -> int:
    try:
        job = job_from_args(args)
    except ValueError as exc:
        print(f"avsiam submit: {exc}", file=sys.stderr)
        return 2
    script = render(job)
    if args.save_script:
        args.save_script.parent.mkdir(parents=True, exist_ok=True)
        args.save_script.write_text(script)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    try:
        job_id = submit(script)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"avsiam submit: {exc}", file=sys.stderr)
        return 1
    print(job_id)
    log = job.sbatch.output.replace("%x", job.sbatch.job_name).replace("%j", job_id)
    log = log.replace("%A", job_id).replace("%a", "*")
    print(f"submitted {job.kind} job {job_id}: watch with `squeue -j {job_id}`, `tail -f {log}`; "
          f"restarts: `scontrol show job {job_id}` (Restarts=) or `sacct -j {job_id} --duplicates "
          f"--format=JobID,State,Elapsed`; cancel with `scancel {job_id}`", file=sys.stderr)
    print(f"arguments inside the job: {shlex.join(job.job_args) or '(none)'}", file=sys.stderr)
    print(f"python: {job.python}; project dir (PYTHONPATH): {job.project_dir}"
          + (f"; run folder: {job.run_dir}" if job.run_dir else ""), file=sys.stderr)
    return 0
