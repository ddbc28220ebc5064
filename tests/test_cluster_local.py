"""The local SLURM cluster itself: it starts, runs a 2-node job, and stops without a trace."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.local import LocalSlurmCluster, SlurmUnavailable, render_slurm_conf, why_unavailable
from cluster.local.cluster import _alive
from cluster.local.slurm_conf import LocalClusterConfig, parse_slurm_conf
from tests.slurm_fixtures import REPO, slurm_cluster, wait_for_jobs  # noqa: F401

pytestmark = pytest.mark.slurm


def test_slurm_conf_puts_every_path_and_port_in_the_cluster_folder(tmp_path):
    cfg = LocalClusterConfig(root=tmp_path, ctld_port=41000, node_ports=(41001, 41002),
                             hostname="box", cpus_per_node=2)
    text = render_slurm_conf(cfg)
    assert "SlurmctldPort=41000" in text
    assert f"FirstJobId={41000 % 190 * 100 + 1}" in text     # clusters side by side: other job ids
    assert "NodeName=node1 NodeHostname=box NodeAddr=127.0.0.1 Port=41001 CPUs=2" in text
    assert "NodeName=node2 NodeHostname=box NodeAddr=127.0.0.1 Port=41002 CPUs=2" in text
    assert f"AuthInfo=socket={tmp_path}/munge/munge.socket,cred_expire=5" in text
    for line in text.splitlines():
        for word in line.replace("=", " ").replace(",", " ").split():
            if word.startswith("/"):
                assert word.startswith(str(tmp_path)), line
    (tmp_path / "slurm.conf").write_text(text)
    back = parse_slurm_conf(tmp_path)
    assert (back.ctld_port, back.node_ports, back.requeue_delay_s) == (41000, (41001, 41002), 5)
    with pytest.raises(ValueError, match="ports must differ"):
        LocalClusterConfig(root=tmp_path, ctld_port=1, node_ports=(1, 2))
    with pytest.raises(ValueError, match="at least 5 s"):
        LocalClusterConfig(root=tmp_path, ctld_port=1, node_ports=(2,), requeue_delay_s=2)


def test_gres_and_preemption_are_configured_and_read_back(tmp_path):
    """--gres-gpus N: a gpu gres of N device-less GPUs per node; the `urgent` partition preempts
    (requeues, after GraceTime) jobs of the default one over the same nodes."""
    from cluster.local.slurm_conf import gpu_device_paths, render_gres_conf
    cfg = LocalClusterConfig(root=tmp_path, ctld_port=41000, node_ports=(41001, 41002),
                             hostname="box", cpus_per_node=2, gres_gpus=2, grace_time_s=45)
    text = render_slurm_conf(cfg)
    assert "GresTypes=gpu" in text and text.count(" Gres=gpu:2 ") == 2
    assert "PreemptType=preempt/partition_prio" in text and "PreemptMode=REQUEUE" in text
    assert ("PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP "
            "PriorityTier=1 PreemptMode=REQUEUE GraceTime=45") in text
    assert "PartitionName=urgent Nodes=node1,node2 MaxTime=INFINITE State=UP PriorityTier=2" in text
    assert render_gres_conf(cfg) == f"Name=gpu File={tmp_path}/dev/gpu[0-1]\n"
    assert gpu_device_paths(cfg) == [tmp_path / "dev" / "gpu0", tmp_path / "dev" / "gpu1"]
    (tmp_path / "slurm.conf").write_text(text)
    back = parse_slurm_conf(tmp_path)
    assert (back.gres_gpus, back.grace_time_s) == (2, 45)
    plain = render_slurm_conf(LocalClusterConfig(root=tmp_path, ctld_port=1, node_ports=(2,)))
    assert "Gres" not in plain


def test_unavailable_cluster_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in why_unavailable()
    with pytest.raises(SlurmUnavailable, match="needs root"):
        LocalSlurmCluster(nodes=1).start()


def _pids(cluster: LocalSlurmCluster) -> dict[str, int]:
    return cluster._running_pids()


def test_start_then_stop_leaves_no_daemon_and_no_folder():
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    with LocalSlurmCluster(nodes=2) as cluster:
        root = cluster.config.root
        pids = _pids(cluster)
        assert set(pids) == {"munged", "slurmctld", "node1", "node2"}
        assert cluster.node_states() == {"node1": "idle", "node2": "idle"}
    assert [name for name, pid in pids.items() if _alive(pid)] == []
    assert not root.exists()


def test_a_running_cluster_can_be_stopped_from_its_folder():
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurmCluster(nodes=1).start()
    pids = _pids(cluster)
    # as `python -m cluster.local stop --dir ROOT` does, from another process
    attached = LocalSlurmCluster.attach(cluster.config.root)
    assert attached._running_pids() == pids
    attached.stop()
    assert attached._running_pids() == {}
    cluster.stop()  # idempotent
    assert not cluster.config.root.exists()


def test_a_folder_munged_cannot_use_is_a_clear_reason(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    cluster = LocalSlurmCluster(nodes=1, root=private / "cluster")
    if why_unavailable():
        pytest.skip(why_unavailable())
    with pytest.raises(SlurmUnavailable, match=f"{private} is not"):
        cluster.start()


ENV_PROBE = ("import json, os, socket; from trainer.engine.distributed import detect_env; "
             "e = detect_env(); print(json.dumps({'rank': e.rank, 'world': e.world_size, "
             "'local': e.local_rank, 'launcher': e.launcher, "
             "'node': os.environ['SLURMD_NODENAME'], 'job': os.environ['SLURM_JOB_ID']}))")


def test_two_node_job_maps_slurm_tasks_to_ranks(slurm_cluster, tmp_path):
    """One task per node: SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID become rank/world/local rank."""
    probe = tmp_path / "probe.py"
    probe.write_text(ENV_PROBE)
    out = tmp_path / "job.out"
    env = slurm_cluster.env({**os.environ, "PYTHONPATH": str(REPO)})
    proc = subprocess.run(
        ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", f"--output={out}",
         f"--wrap=srun --kill-on-bad-exit=1 {sys.executable} {probe}"],
        env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    [record] = wait_for_jobs(slurm_cluster, job_id, timeout=90, log=out)
    assert record["JobState"] == "COMPLETED", out.read_text()
    lines = sorted((json.loads(line) for line in out.read_text().splitlines()
                    if line.startswith("{")), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"], r["local"], r["launcher"]) for r in lines] == [
        (0, 2, 0, "slurm"), (1, 2, 0, "slurm")]
    assert sorted(r["node"] for r in lines) == ["node1", "node2"]
    assert {r["job"] for r in lines} == {job_id}


DIE_PROBE = """
import json, sys, time
from cluster.local import LocalSlurmCluster
cluster = LocalSlurmCluster(nodes=1, root=sys.argv[1]).start()
print(json.dumps(cluster._running_pids()), flush=True)
time.sleep(120)
"""


def test_daemons_die_with_a_killed_owner(tmp_path):
    """A test run killed with SIGKILL (no atexit, no fixture teardown) leaves no daemon behind."""
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="avsiam-slurm-test-"))
    root.chmod(0o755)
    try:
        owner = subprocess.Popen([sys.executable, "-c", DIE_PROBE, str(root / "c")], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        pids = json.loads(owner.stdout.readline())
        assert set(pids) == {"munged", "slurmctld", "node1"}
        owner.kill()
        owner.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
            time.sleep(0.2)
        assert [name for name, pid in pids.items() if _alive(pid)] == []
    finally:
        LocalSlurmCluster.attach(root / "c").stop()
        shutil.rmtree(root, ignore_errors=True)


def test_start_command_passes_gres_gpus_and_grace_time(monkeypatch, tmp_path, capsys):
    """`python -m cluster.local start --gres-gpus 2 --grace-time 30` builds that cluster."""
    import cluster.local.__main__ as command
    made = {}

    class Recorder(LocalSlurmCluster):
        def start(self):
            made.update(gres=self.config.gres_gpus, grace=self.config.grace_time_s)
            return self

    monkeypatch.setattr(command, "LocalSlurmCluster", Recorder)
    assert command.main(["start", "--dir", str(tmp_path / "c"), "--gres-gpus", "2",
                         "--grace-time", "30"]) == 0
    assert made == {"gres": 2, "grace": 30}
    assert capsys.readouterr().out.startswith("export SLURM_CONF=")
