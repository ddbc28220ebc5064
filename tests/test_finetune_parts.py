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


# --- presets, schedule and parameter groups -------------------------------------------------------

OFFICIAL = {  # avsiam.md section 3: lr, head/fusion multipliers, epochs, decay start (1-based) x factor,
    #           per-GPU batch, balanced sampler, loss
    "as20k": (1e-4, 100, 100, 15, 2, 0.75, 4, False, "bce"),
    "as2m": (1e-5, 100, 100, 15, 5, 0.9, 64, True, "bce"),
    "vggsound": (5e-5, 10, 1, 20, 2, 0.75, 64, True, "ce"),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_presets_follow_the_official_recipes(name):
    from trainer.engine.schedule import lr_at
    from trainer.finetune.config import load_finetune_config

    lr, head, fusion, epochs, start, factor, batch, balanced, loss = OFFICIAL[name]
    cfg = load_finetune_config(name)
    assert (cfg.optim.lr, cfg.heads.head_lr_mult, cfg.heads.fusion_lr_mult) == (lr, head, fusion)
    assert (cfg.schedule.epochs, cfg.data.batch_size, cfg.loss) == (epochs, batch, loss)
    assert cfg.data.options.get("balanced", False) is balanced
    assert cfg.heads.mix == {"audio_visual": 0.5, "audio": 0.25, "visual": 0.25}
    assert (cfg.optim.betas, cfg.optim.weight_decay) == ((0.95, 0.999), 5e-7)
    # CAV-MAE's MultiStepLR(range(start, ...)) stepped at epoch ends: epoch e (1-based) runs at
    # lr * factor ** max(0, e - start)
    per_epoch = 7
    for epoch in range(1, epochs + 1):
        got = lr_at((epoch - 1) * per_epoch + 3, cfg.optim, epochs * per_epoch)
        assert got == pytest.approx(lr * factor ** max(0, epoch - start)), epoch


def test_overrides_and_bad_values_are_checked():
    from trainer.finetune.config import load_finetune_config

    cfg = load_finetune_config("tiny_cpu", ["num_classes=7", "heads.mix={audio: 1.0}", "loss=ce"])
    assert cfg.num_classes == 7 and cfg.heads.mix["audio"] == 1.0 and cfg.loss == "ce"
    with pytest.raises(ValueError, match="loss"):
        load_finetune_config("tiny_cpu", ["loss=mse"])
    with pytest.raises(ValueError, match="average_last"):
        load_finetune_config("tiny_cpu", ["average_last=9"])
    with pytest.raises(FileNotFoundError, match="presets"):
        load_finetune_config("no_such_recipe")
    with pytest.raises(ValueError, match=r"data\.options\.mixupp"):    # the run fields are the loop's
        load_finetune_config("tiny_cpu", ["data.options.mixupp=0.2"])
    with pytest.raises(ValueError, match="log_every must be > 0"):
        load_finetune_config("tiny_cpu", ["log_every=0"])


def test_parameter_groups_scale_heads_and_fusion_and_skip_the_decoder():
    from trainer.finetune.config import load_finetune_config
    from trainer.engine.module import param_groups
    from trainer.finetune.module import FinetuneModule, build_finetune_model
    from trainer.finetune.run import FinetuneKind

    cfg = load_finetune_config("as20k", ["model={size: tiny, depth: 2, audio_frames: 64, "
                                         "image_size: 32, decoder_depth: 1}", "num_classes=5"])
    module = FinetuneModule(build_finetune_model(cfg))
    groups = param_groups(module, cfg.optim.weight_decay, FinetuneKind(cfg).lr_scales())
    names = {id(p): n for n, p in module.model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))
    assert not any(n.startswith("decoder.") for n in seen)
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            want = 100.0 if name.startswith(("head_", "fusion.")) else 1.0
            assert g["lr_scale"] == want, name
            assert (g["weight_decay"] == 0.0) == (p.ndim <= 1 or name.endswith("pos_embed")), name
    assert module.model.head_av.fc.out_features == 5
