"""Start or stop a local SLURM cluster from a shell.

    eval "$(python -m cluster.local start --dir /tmp/mycluster)"   # exports SLURM_CONF
    sbatch ...; squeue; sinfo
    python -m cluster.local stop --dir /tmp/mycluster
"""
from __future__ import annotations

import argparse
import atexit
import sys
import tempfile
from pathlib import Path

from cluster.local.cluster import LocalSlurmCluster, SlurmUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, help="cluster folder (start: default a new temp one)")
    parser.add_argument("--nodes", type=int, default=2, help="slurmd daemons (node1..nodeN)")
    parser.add_argument("--gres-gpus", type=int, default=0, metavar="N",
                        help="a gpu gres of N GPUs per node (no real devices: a --gres=gpu:N job "
                        "gets N CPU ranks per node)")
    parser.add_argument("--grace-time", type=int, default=60, metavar="S",
                        help="seconds a job preempted by the 'urgent' partition gets to save")
    args = parser.parse_args(argv)
    if args.action == "start":
        root = args.dir or Path(tempfile.mkdtemp(prefix="avsiam-slurm-"))
        root.mkdir(parents=True, exist_ok=True)
        cluster = LocalSlurmCluster(nodes=args.nodes, root=root, die_with_parent=False,
                                    gres_gpus=args.gres_gpus, grace_time_s=args.grace_time)
        try:
            cluster.start()
        except SlurmUnavailable as exc:
            print(f"local SLURM cluster not started: {exc}", file=sys.stderr)
            return 1
        atexit.unregister(cluster.stop)  # keep it running after this process exits
        print(f"export SLURM_CONF={cluster.config.conf_path}")
        print(f"# stop with: python -m cluster.local stop --dir {root}", file=sys.stderr)
        return 0
    if args.dir is None:
        parser.error(f"{args.action} needs --dir")
    cluster = LocalSlurmCluster.attach(args.dir)
    if args.action == "status":
        print(cluster.run("sinfo", check=False) or "no controller answers", end="")
        return 0
    cluster.stop()
    print(f"stopped the cluster in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
