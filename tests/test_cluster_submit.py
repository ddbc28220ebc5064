"""`avsiam submit`: batch scripts rendered from typed options, without a cluster."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import submit
from cluster.sbatch_script import (TEMPLATES, JobScript, SbatchOptions, render, render_template,
                                   time_limit_seconds)

REPO = Path(__file__).resolve().parents[1]


def _avsiam_submit(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "cluster.cli", "submit", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)


def _header(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines()
            if line.startswith("#SBATCH ")]


def test_dry_run_prints_the_pretrain_script_with_every_flag():
    proc = _avsiam_submit("pretrain", "--nodes", "4", "--gpus-per-node", "8", "--cpus-per-task",
                          "64", "--time", "2-00:00:00", "--partition", "gpu", "--account", "proj42",
                          "--job-name", "vitl", "--sbatch-arg=--mem=0", "--sbatch-arg=--exclusive",
                          "--python", "/opt/env/bin/python", "--project-dir", "/srv/avsiam",
                          "--dry-run", "--", "--config", "avsiam_large", "out_dir=runs/large run",
                          "model.pretrained=vit_large.safetensors")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert script.startswith("#!/bin/bash\n")
    assert _header(script) == [
        "--job-name=vitl", "--nodes=4", "--ntasks-per-node=1", "--cpus-per-task=64",
        "--gpus-per-node=8", "--time=2-00:00:00", "--partition=gpu", "--account=proj42",
        "--output=%x-%j.out", "--open-mode=append", "--requeue", "--signal=B:USR1@90", "--mem=0",
        "--exclusive"]
    assert "srun --kill-on-bad-exit=1 --ntasks-per-node=1" in script
    assert "/opt/env/bin/python -m cluster.launch" in script
    assert "--rdzv-backend=c10d" in script and '--rdzv-id="$SLURM_JOB_ID"' in script
    assert "rdzv_port=$((20000 + SLURM_JOB_ID % 20000))" in script
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script and "NodeAddr=" in script
    # node and rank counts come from SLURM's environment, never written a second time
    assert '--nnodes="$SLURM_JOB_NUM_NODES"' in script
    assert '--nproc-per-node="$procs_per_node"' in script
    # torchrun leaves TERM to its ranks (its handler would stop them before they saved)
    assert "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT" in script
    assert """bash -c 'trap "" USR1 TERM; exec "$0" "$@"'""" in script
    assert "-m cluster.ranks --expect 8 --expect-source '--gpus-per-node 8'" in script
    # the run folder (stop-request files) is resolved at submit time, from where submit runs
    assert f"run_dir='{REPO}/runs/large run'" in script
    assert "--nnodes=4" not in script and "nproc-per-node=8" not in script
    assert "export PYTHONPATH=/srv/avsiam${PYTHONPATH:+:$PYTHONPATH}" in script
    # job arguments are shell-quoted, after the command
    assert script.rstrip().endswith(
        "-m cluster.cli pretrain --resume auto --config avsiam_large 'out_dir=runs/large run' "
        "model.pretrained=vit_large.safetensors")
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert "trap 'on_stop_signal USR1' USR1" in script and "trap 'on_stop_signal TERM' TERM" in script


def test_shard_array_passes_task_k_of_n_and_workers_from_slurm():
    script = _avsiam_submit("shard", "--array", "16", "--max-running", "4", "--cpus-per-task", "8",
                            "--dry-run", "--", "--manifest", "m.csv", "--out", "shards").stdout
    header = _header(script)
    assert "--array=0-15%4" in header and "--cpus-per-task=8" in header
    assert "--output=%x-%A_%a.out" in header and "--open-mode=append" in header
    assert '--task-index "$SLURM_ARRAY_TASK_ID" --num-tasks 16' in script
    assert '--workers "${SLURM_CPUS_PER_TASK:-1}"' in script
    assert script.rstrip().endswith("--manifest m.csv --out shards")
    # the sharder is stopped with TERM on the warning (it keeps finished shards), then requeued
    assert 'kill -s TERM "$step_pid"' in script and 'kill -s USR1 "$step_pid"' not in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize("kind,extra,job", [("shard", ["--array", "3"], ["--x", "y z"]),
                                            ("pretrain", ["--nodes", "2"],   # a config submit accepts
                                             ["--config", "tiny_cpu", "out_dir=y z"])])
def test_rendered_scripts_are_valid_bash(kind, extra, job, tmp_path):
    script = tmp_path / f"{kind}.sbatch"
    proc = _avsiam_submit(kind, *extra, "--save-script", str(script), "--dry-run", "--", *job)
    assert proc.returncode == 0, proc.stderr
    assert script.read_text() == proc.stdout
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def _job(**sbatch) -> JobScript:
    options = SbatchOptions(job_name="j", output="%x-%j.out", **sbatch)
    return JobScript(kind="pretrain", sbatch=options, python="/env/bin/python", project_dir="/proj",
                     job_args=("--config", "tiny_cpu"), run_dir="/runs/r")


def test_rendering_is_deterministic_and_fills_every_placeholder():
    first, second = render(_job(nodes=2, time="01:00:00")), render(_job(nodes=2, time="01:00:00"))
    assert first == second
    assert "{{" not in first and "}}" not in first
    with pytest.raises(KeyError, match="step_signal"):
        render_template("requeue_on_signal.sh", {})


def test_the_rendezvous_port_is_the_trainers_formula_rendered_once():
    """The batch script's port is `slurm_port` rendered from Python, not a second copy of it."""
    from trainer.engine.distributed import slurm_port, slurm_port_shell

    assert "20000" not in (TEMPLATES / "train.sbatch").read_text()
    line = next(x for x in render(_job()).splitlines() if x.startswith("rdzv_port="))
    assert line.split("=", 1)[1].split("#")[0].strip() == slurm_port_shell()
    for job_id in (7, 123456):
        out = subprocess.run(["bash", "-c", f"{line}\necho $rdzv_port"], capture_output=True, text=True,
                             env={"SLURM_JOB_ID": str(job_id)}, check=True).stdout
        assert int(out) == slurm_port(job_id)


def test_templates_hold_no_site_values():
    """Partitions, accounts, paths and sizes come from the options only."""
    for path in sorted(TEMPLATES.iterdir()):
        text = path.read_text()
        for site_value in ("--partition", "--account", "--time", "/home/", "/work/", "/scratch",
                           "/opt/", ".venv", "--nodes=", "--gpus-per-node="):
            assert site_value not in text, f"{path.name} bakes in {site_value}"
    script = render(_job())
    assert "#SBATCH --partition" not in script and "#SBATCH --account" not in script
    assert "#SBATCH --time" not in script and "#SBATCH --gpus-per-node" not in script
    absolute = {word for line in script.splitlines() if not line.startswith("#")
                for word in line.replace("=", " ").split() if word.startswith("/")}
    assert absolute == {"/env/bin/python", "/proj${PYTHONPATH:+:$PYTHONPATH}", "/runs/r"}


def test_defaults_come_from_the_running_interpreter_and_checkout():
    script = _avsiam_submit("shard", "--array", "2", "--dry-run").stdout
    assert f"{sys.executable} -m cluster.cli shard" in script
    assert f"export PYTHONPATH={REPO}$" in script.replace("{PYTHONPATH", "$")


@pytest.mark.parametrize("argv,message", [
    (["shard", "--array", "0"], "--array N needs N >= 1"),
    (["pretrain", "--time", "1", "--signal-seconds", "90"], "must be shorter than the time limit"),
    (["pretrain", "--time", "soon"], "use minutes, MM:SS"),
    (["pretrain", "--partition", "a b"], "must be one word"),
    (["pretrain", "--sbatch-arg", "mem=4G"], "give one sbatch flag"),
    (["pretrain", "--nodes", "0"], "must be at least 1"),
])
def test_bad_options_are_clear_errors(argv, message):
    proc = _avsiam_submit(*argv, "--dry-run")
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stdout == ""


def test_shard_without_array_and_job_args_without_separator_are_refused():
    assert "--array" in _avsiam_submit("shard", "--dry-run").stderr
    proc = _avsiam_submit("pretrain", "--dry-run", "--config", "x")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


@pytest.mark.parametrize("value,seconds", [("30", 1800), ("5:30", 330), ("01:02:03", 3723),
                                           ("2-00", 172800), ("1-02:03", 93780),
                                           ("1-00:00:10", 86410)])
def test_time_limits_in_every_slurm_form(value, seconds):
    assert time_limit_seconds(value) == seconds


def test_without_sbatch_submit_says_where_to_run(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on PATH
    parser = __import__("argparse").ArgumentParser()
    submit.add_arguments(parser)
    assert submit.main(parser.parse_args(["pretrain", "--", "--config", "tiny_cpu"])) == 1
    assert "sbatch not found" in capsys.readouterr().err
