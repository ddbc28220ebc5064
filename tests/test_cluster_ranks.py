"""Ranks per node from whatever a site uses to hand out GPUs, the run folder a job will write, and
what `avsiam submit` embeds for training jobs (no cluster needed)."""
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.ranks import NoGpuFound, gpus_in_gres, ranks_on_this_node, requested_gpus_per_node
from cluster.submit import default_project_dir, run_folder

REPO = Path(__file__).resolve().parents[1]


def _no_smi():
    return None


# --- submit time ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,per_node,source", [
    ({"gpus_per_node": "8"}, 8, "--gpus-per-node 8"),
    ({"gpus_per_node": "a100:4"}, 4, "--gpus-per-node a100:4"),
    ({"gres": "gpu:8"}, 8, "--gres gpu:8"),
    ({"gres": "gpu:a100:2"}, 2, "--gres gpu:a100:2"),
    ({"gres": "gpu"}, 1, "--gres gpu"),
    ({"gres": "shard:2,gpu:h100:4"}, 4, "--gres shard:2,gpu:h100:4"),
    ({"gpus": "16", "nodes": 2}, 8, "--gpus 16"),
    ({"gpus": "v100:4", "nodes": 1}, 4, "--gpus v100:4"),
    ({"gpus_per_task": "2"}, 2, "--gpus-per-task 2"),
    ({"extra": ("--mem=0", "--gres=gpu:a100:8")}, 8, "--gres gpu:a100:8"),
    ({"extra": ("--gpus=16",), "nodes": 4}, 4, "--gpus 16"),
])
def test_every_way_of_asking_for_gpus_gives_the_gpus_of_one_node(flags, per_node, source):
    asked = requested_gpus_per_node(**flags)
    assert (asked.per_node, asked.source) == (per_node, source)


def test_no_gpu_flag_asks_for_no_gpu_and_bad_counts_are_refused():
    assert requested_gpus_per_node() is None
    assert requested_gpus_per_node(gres="shard:2") is None
    assert gpus_in_gres("tmpfs:10G") is None
    with pytest.raises(ValueError, match="split evenly over --nodes 4"):
        requested_gpus_per_node(gpus="6", nodes=4)
    with pytest.raises(ValueError, match="disagree"):
        requested_gpus_per_node(gpus_per_node="8", gres="gpu:4")
    with pytest.raises(ValueError, match="gpu:N or gpu:TYPE:N"):
        requested_gpus_per_node(gres="gpu:a:b:c")


# --- run time ------------------------------------------------------------------------------------

@pytest.mark.parametrize("env,per_node,name", [
    ({"SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_NODE": "8", "CUDA_VISIBLE_DEVICES": "0"}, 4,
     "SLURM_GPUS_ON_NODE"),
    ({"SLURM_GPUS_PER_NODE": "a100:8", "SLURM_JOB_GPUS": "0,1"}, 8, "SLURM_GPUS_PER_NODE"),
    ({"SLURM_JOB_GPUS": "0,1,2", "CUDA_VISIBLE_DEVICES": "0"}, 3, "SLURM_JOB_GPUS"),
    ({"SLURM_STEP_GPUS": "4,5", "CUDA_VISIBLE_DEVICES": "0"}, 2, "SLURM_STEP_GPUS"),
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, 2, "CUDA_VISIBLE_DEVICES"),
    ({"SLURM_GPUS_ON_NODE": "0", "SLURM_JOB_GPUS": "0,1"}, 2, "SLURM_JOB_GPUS"),
])
def test_run_time_count_takes_the_first_variable_in_order(env, per_node, name):
    count = ranks_on_this_node(env, nvidia_smi=lambda: 7)
    assert count.per_node == per_node and count.source.startswith(f"{name}=")


def test_nvidia_smi_is_the_last_resort_and_no_gpu_is_one_cpu_rank():
    assert ranks_on_this_node({"CUDA_VISIBLE_DEVICES": ""}, nvidia_smi=lambda: 3).source == \
        "nvidia-smi -L"
    cpu = ranks_on_this_node({}, nvidia_smi=_no_smi)
    assert cpu.per_node == 1 and "CPU rank" in cpu.source


def test_a_gpu_job_that_finds_no_gpu_stops_with_a_message():
    with pytest.raises(NoGpuFound, match=r"asked for 8 GPUs per node \(--gres gpu:8\).*node7"):
        ranks_on_this_node({"SLURMD_NODENAME": "node7", "CUDA_VISIBLE_DEVICES": "NoDevFiles"},
                           expect=8, expect_source="--gres gpu:8", nvidia_smi=_no_smi)


def test_ranks_command_prints_count_and_how_or_exits_2():
    env = {"PATH": "/nonexistent", "SLURM_JOB_GPUS": "0,1"}
    proc = subprocess.run([sys.executable, "-m", "cluster.ranks", "--expect", "2"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "2 SLURM_JOB_GPUS=0,1\n")
    proc = subprocess.run([sys.executable, "-m", "cluster.ranks", "--expect", "2"], cwd=REPO,
                          env={"PATH": "/nonexistent"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "finds none" in proc.stderr


# --- the run folder and what submit embeds -------------------------------------------------------

def test_run_folder_is_the_configs_out_dir_from_where_the_job_runs(tmp_path):
    assert run_folder("pretrain", ["--config", "tiny_cpu"], tmp_path) == \
        tmp_path / "runs" / "pretrain_tiny"
    assert run_folder("finetune", ["--config", "tiny_cpu"], tmp_path) == \
        tmp_path / "runs" / "finetune_tiny"
    assert run_folder("pretrain", ["--config", "tiny_cpu", "out_dir=a"], tmp_path) == tmp_path / "a"
    assert run_folder("pretrain", ["--out=/abs/b", "--config", "tiny_cpu", "out_dir=a"],
                      tmp_path) == Path("/abs/b")
    with pytest.raises(ValueError, match="after --"):
        run_folder("finetune", [], tmp_path)


def _submit(*argv, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "cluster.cli", "submit", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_submit_finetune_with_gres_embeds_ranks_run_folder_and_says_what_it_embedded(tmp_path):
    proc = _submit("finetune", "--nodes", "2", "--gres", "gpu:a100:4", "--python", "/env/py",
                   "--dry-run", "--", "--config", "tiny_cpu", "--out", "ft", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert "#SBATCH --gres=gpu:a100:4" in script and "--gpus-per-node" not in script
    assert "-m cluster.ranks --expect 4 --expect-source '--gres gpu:a100:4'" in script
    assert f"run_dir={tmp_path}/ft\n" in script
    assert script.rstrip().endswith("-m cluster.cli finetune --resume auto --config tiny_cpu --out ft")
    # not a git checkout: the installed package's folder goes on PYTHONPATH
    assert f"export PYTHONPATH={REPO}$" in script.replace("{PYTHONPATH", "$")
    proc = _submit("finetune", "--gpus", "3", "--nodes", "2", "--dry-run", "--", "--config", "x")
    assert proc.returncode == 2 and "split evenly" in proc.stderr


def test_project_dir_defaults_to_the_checkout_submit_runs_in(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "cluster").mkdir(parents=True)
    (checkout / "cluster" / "cli.py").write_text("")
    (checkout / "sub").mkdir()
    subprocess.run(["git", "init", "-q", str(checkout)], check=True, timeout=30)
    assert default_project_dir(checkout / "sub") == checkout
    assert default_project_dir(tmp_path) == REPO          # no checkout: the package location
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["git", "init", "-q", str(other)], check=True, timeout=30)
    assert default_project_dir(other) == REPO             # a checkout of something else


def test_submit_prints_the_python_and_project_dir_it_embedded(tmp_path):
    """With a stand-in sbatch that keeps the script: the job id on stdout, and on stderr what the
    script runs (python, PYTHONPATH, run folder), exactly as embedded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncat > {tmp_path}/script.sh\necho 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**__import__("os").environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "pretrain", "--",
                           "--config", "tiny_cpu", "--out", str(tmp_path / "run")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "4242\n"
    line = f"python: {sys.executable}; project dir (PYTHONPATH): {REPO}; run folder: {tmp_path}/run"
    assert line in proc.stderr
    script = (tmp_path / "script.sh").read_text()
    assert f"{sys.executable} -m cluster.launch" in script and f"export PYTHONPATH={REPO}" in script
    assert "sacct -j 4242" in proc.stderr and "scontrol show job 4242" in proc.stderr
