"""The README's "Try it on one machine" block, run as written (in a scratch folder that sees this
checkout's .venv, with its own cluster folder): the sharding array, then the 2-node pretraining job
that waits for it, finish; the log states its ranks and ends with the trainer's summary."""
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster.local import LocalSlurmCluster, why_unavailable
from tests.slurm_fixtures import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]

README_DIR = "/tmp/avsiam-slurm"


def readme_recipe() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("**Try it on one machine.**", 1)[1]
    return section.split("```\n", 2)[1]


def test_readme_recipe_runs_as_written(tmp_path):
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    if not (REPO / ".venv" / "bin" / "avsiam").exists():
        pytest.skip("the recipe runs .venv/bin/avsiam: make the .venv first")
    recipe = readme_recipe()
    assert README_DIR in recipe and "cluster.local stop" in recipe.splitlines()[-1]
    root = Path(tempfile.mkdtemp(prefix="avsiam-readme-"))
    root.chmod(0o755)
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    try:
        proc = subprocess.run(["bash", "-e", "-c", recipe.replace(README_DIR, str(root / "c"))],
                              cwd=tmp_path, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        if (root / "c" / "slurm.conf").exists():
            LocalSlurmCluster.attach(root / "c").stop()
        shutil.rmtree(root, ignore_errors=True)
    [log] = tmp_path.glob("avsiam-pretrain-*.out")
    text = log.read_text()
    assert "2 nodes x 1 ranks" in text and "Traceback" not in text
    assert re.search(r"pretrain: finished after step 20;", text), text[-3000:]
    assert "JobState=COMPLETED" in proc.stdout and "Restarts=0" in proc.stdout
    assert len(list(tmp_path.glob("avsiam-shard-*_[01].out"))) == 2
