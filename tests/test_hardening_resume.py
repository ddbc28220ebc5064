"""Which DeepSpeed checkpoint `--resume` picks: in the run's own folder or another run's."""
import json

import pytest

from trainer.engine.checkpoint import COMPLETE, find_resume_point


def _fake_complete(folder, step):
    folder.mkdir(parents=True)
    (folder / COMPLETE).write_text(json.dumps({"step": step, "world_size": 1, "zero_stage": 2}))


def test_resume_from_another_runs_folder_picks_its_checkpoint(tmp_path):
    run_root = tmp_path / "run" / "checkpoints"
    _fake_complete(run_root / "step_00000004", 4)
    other = tmp_path / "earlier" / "checkpoints"
    _fake_complete(other / "step_00000009", 9)
    point = find_resume_point(str(other / "step_00000009"), run_root)
    assert (point.root, point.step) == (other, 9)
    assert find_resume_point(str(other), run_root).step == 9
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        find_resume_point(str(tmp_path / "empty"), run_root)


def test_resume_inside_the_run_still_works(tmp_path):
    run_root = tmp_path / "run" / "checkpoints"
    _fake_complete(run_root / "step_00000004", 4)
    assert find_resume_point(str(run_root / "step_00000004"), run_root).step == 4
    assert find_resume_point("auto", run_root).step == 4
