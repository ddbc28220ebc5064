"""The model names its parts once (`group_matcher`) and builds itself from its config."""
import dataclasses

import pytest
import torch

from trainer.model import AVSiam, AVSiamConfig
from trainer.model.parts import freeze_parts, part_of

SMALL = dict(size="tiny", depth=2, audio_frames=64, image_size=32, decoder_depth=1)


@pytest.mark.parametrize("shared", [True, False])
def test_every_parameter_has_exactly_one_part(shared):
    with torch.device("meta"):
        model = AVSiam(**SMALL, share_backbone=shared)
    coarse = {part_of(n, model.group_matcher(coarse=True)) for n, _ in model.named_parameters()}
    assert coarse == {"backbone", "fusion", "decoder", "head"}
    fine = {n: part_of(n, model.group_matcher()) for n, _ in model.named_parameters()}
    assert set(fine.values()) == ({"audio", "visual", "shared"} if shared else {"audio", "visual"}) | \
        {"fusion", "decoder", "head"}
    assert fine["blocks.0.attn.qkv.weight"] == ("shared" if shared else "visual")
    assert fine["embed_a.proj.weight"] == "audio" and fine["head_av.fc.weight"] == "head"


def test_freezing_parts_freezes_exactly_their_parameters():
    with torch.device("meta"):
        model = AVSiam(**SMALL)
    freeze_parts(model, {"decoder", "head"})
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"decoder", "head_a", "head_v", "head_av"}


def test_from_config_builds_the_model_the_config_describes():
    cfg = AVSiamConfig(**SMALL, num_classes=7, fusion_depth=1)
    with torch.device("meta"):
        model = AVSiam.from_config(cfg)
    assert dataclasses.asdict(model.config) == dataclasses.asdict(cfg)
    assert len(model.fusion) == 1 and model.head_a.fc.out_features == 7
