"""Fine-tuning parts that need no model: the per-iteration head mix and weight averaging."""
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainer.finetune.averaging import AveragingError, average_checkpoints, last_k
from trainer.finetune.heads import HeadMixError, HeadSchedule, check_mix


def test_head_mix_follows_the_configured_probabilities():
    schedule = HeadSchedule(seed=0)
    counts = Counter(schedule(step) for step in range(8000))
    assert counts["audio_visual"] / 8000 == pytest.approx(0.5, abs=0.03)
    assert counts["audio"] / 8000 == pytest.approx(0.25, abs=0.03)
    assert counts["visual"] / 8000 == pytest.approx(0.25, abs=0.03)
    only_audio = HeadSchedule({"audio": 1.0}, seed=0)
    assert {only_audio(s) for s in range(200)} == {"audio"}


def test_head_mix_is_a_function_of_seed_and_step():
    a, b = HeadSchedule(seed=3), HeadSchedule(seed=3)
    assert [a(s) for s in range(100)] == [b(s) for s in range(100)]
    assert [a(s) for s in range(50, 100)] == [b(s) for s in range(50, 100)]  # resume mid-way
    assert [a(s) for s in range(100)] != [HeadSchedule(seed=4)(s) for s in range(100)]


def test_head_inputs_drop_the_other_modality():
    assert HeadSchedule.inputs("audio", "A", "V") == {"audio": "A", "visual": None}
    assert HeadSchedule.inputs("visual", "A", "V") == {"audio": None, "visual": "V"}
    assert HeadSchedule.inputs("audio_visual", "A", "V") == {"audio": "A", "visual": "V"}


@pytest.mark.parametrize("mix,match", [({"sound": 1.0}, "unknown"), ({"audio": -1.0}, ">= 0"),
                                       ({"audio": 0.0}, "positive")])
def test_bad_head_mix_is_rejected(mix, match):
    with pytest.raises(HeadMixError, match=match):
        check_mix(mix)


def test_average_of_last_k_checkpoints(tmp_path):
    paths = []
    for epoch in range(1, 5):
        path = tmp_path / f"epoch-{epoch:04d}.safetensors"
        save_file({"w": torch.full((2, 3), float(epoch)), "step": torch.tensor([epoch])}, str(path),
                  metadata={"epoch": str(epoch)})
        paths.append(path)
    chosen = last_k(reversed(paths), 3)
    assert [p.name for p in chosen] == [p.name for p in paths[1:]]
    out = average_checkpoints(chosen, tmp_path / "averaged.safetensors")
    state = load_file(str(out))
    assert torch.equal(state["w"], torch.full((2, 3), 3.0))   # mean of 2, 3, 4
    assert state["step"].tolist() == [4]                        # integers from the newest


def test_averaging_refuses_mismatched_checkpoints(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.zeros(3)}, str(tmp_path / "b.safetensors"))
    save_file({"v": torch.zeros(2)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(AveragingError, match="shape"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "o")
    with pytest.raises(AveragingError, match="keys differ"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "o")
    with pytest.raises(AveragingError, match="finish an epoch"):
        last_k([], 2)
