"""A real, private SLURM cluster on this machine, for tests and for trying `avsiam submit`."""
from cluster.local.cluster import LocalSlurmCluster, SlurmUnavailable, why_unavailable
from cluster.local.slurm_conf import LocalClusterConfig, render_slurm_conf

__all__ = ["LocalClusterConfig", "LocalSlurmCluster", "SlurmUnavailable", "render_slurm_conf",
           "why_unavailable"]
