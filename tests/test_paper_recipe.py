"""The paper's recipe in the presets: weights required for paper sizes, noise/roll on, the official
masking and normalisation, and every deviation a named choice."""
from __future__ import annotations

import pytest

from cluster.cli import main as avsiam
from shards.config import LoaderConfig
from trainer.engine.config import load_config
from trainer.engine.paper_recipe import missing_weights_message

PAPER_PRESETS = {"avsiam_base": "vit_base_patch16_224.orig_in21k",
                 "avsiam_large": "vit_large_patch16_224.augreg_in21k",
                 "avsiam_huge": "vit_huge_patch14_224.orig_in21k"}


def _shard_folder(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "train-000000.tar").write_bytes(b"")
    return folder


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
def test_paper_presets_refuse_to_pretrain_without_weights(preset, tmp_path, capsys):
    out = tmp_path / "run"
    code = avsiam(["pretrain", "--config", preset, f"data.train={_shard_folder(tmp_path)}", f"out_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "model.pretrained" in err and PAPER_PRESETS[preset] in err and "model.pretrained=none" in err
    assert not out.exists()                        # refused before the run started


def test_a_submitted_paper_size_pretraining_without_weights_is_refused_before_the_queue():
    from cluster.job_config import check_job_config

    with pytest.raises(ValueError, match="model.pretrained=none"):
        check_job_config("pretrain", ["--config", "avsiam_huge", "data.train=/data/shards"])
    assert check_job_config("pretrain", ["--config", "avsiam_huge", "model.pretrained=none"]).model.size == "huge"


def test_weights_or_a_deliberate_none_let_a_paper_size_start_and_tiny_needs_neither(tmp_path):
    assert missing_weights_message(load_config("avsiam_base", ["model.pretrained=none"])) is None
    assert missing_weights_message(load_config("avsiam_base", [f"model.pretrained={tmp_path}/vit.pth"])) is None
    assert missing_weights_message(load_config("tiny_cpu")) is None
    for preset, weights in PAPER_PRESETS.items():
        assert load_config(preset).model.timm_weights == weights


def test_pretrained_none_builds_from_random_weights():
    import torch

    from trainer.model import AVSiam

    torch.manual_seed(0)
    model = AVSiam(size="tiny", audio_frames=32, image_size=32, depth=1, decoder_depth=1, pretrained="none")
    assert model.config.pretrained_file is None and model.config.pretrained == "none"


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
def test_paper_presets_pretrain_with_the_official_augmentation_masking_and_normalisation(preset):
    cfg = load_config(preset)
    loader = LoaderConfig(mode="pretrain", batch_size=2, **cfg.data.loader_options()).resolved(
        fbank_mean=-5.081, fbank_std=4.4849, image_size=224, num_frames=10)
    assert loader.noise is True and loader.roll is True
    assert LoaderConfig(mode="pretrain", batch_size=2).resolved(   # the mode alone leaves them off
        fbank_mean=-5.081, fbank_std=4.4849, image_size=224, num_frames=10).noise is False
    assert cfg.data.normalization == "paper" and cfg.objective.audio_mask == "official"


def test_a_jx_style_in21k_file_with_pre_logits_and_21k_head_loads(tmp_path):
    """The official Base code's jx_..._in21k .pth layout (representation layer, 21,843-class head):
    both are dropped, the trunk weights land in the model."""
    import timm
    import torch

    from trainer.model import AVSiam

    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=21843).state_dict()
    source["pre_logits.fc.weight"] = torch.randn(192, 192)
    source["pre_logits.fc.bias"] = torch.zeros(192)
    path = tmp_path / "jx_vit_tiny_patch16_224_in21k.pth"
    torch.save(source, path)
    model = AVSiam(size="tiny", pretrained=str(path), image_size=32, audio_frames=32)
    qkv = [v for k, v in model.state_dict().items() if k.endswith("qkv.weight")][0]
    assert torch.equal(qkv, source["blocks.0.attn.qkv.weight"])
