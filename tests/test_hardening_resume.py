"""DeepSpeed checkpoints (pickles) are read only from the run's own checkpoint folder."""
import json

import pytest

from trainer.engine.checkpoint import COMPLETE, find_resume_point


def _fake_complete(folder, step):
    folder.mkdir(parents=True)
    (folder / COMPLETE).write_text(json.dumps({"step": step, "world_size": 1, "zero_stage": 2}))


def test_resume_from_a_folder_outside_the_run_is_refused(tmp_path):
    run_root = tmp_path / "run" / "checkpoints"
    _fake_complete(run_root / "step_00000004", 4)
    foreign = tmp_path / "downloaded" / "checkpoints"
    _fake_complete(foreign / "step_00000009", 9)
    with pytest.raises(ValueError, match="read only from this run's own checkpoint folder"):
        find_resume_point(str(foreign / "step_00000009"), run_root)
    with pytest.raises(ValueError, match="own checkpoint folder"):
        find_resume_point(str(run_root / ".." / ".." / "downloaded" / "checkpoints"), run_root)


def test_resume_inside_the_run_still_works(tmp_path):
    run_root = tmp_path / "run" / "checkpoints"
    _fake_complete(run_root / "step_00000004", 4)
    assert find_resume_point(str(run_root / "step_00000004"), run_root).step == 4
    assert find_resume_point("auto", run_root).step == 4
