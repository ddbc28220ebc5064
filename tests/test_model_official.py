"""Official AVSiam checkpoints: every key of the official layout is placed or reported, and the
converted model computes exactly what the official forward computes, in all three modes."""
from __future__ import annotations

import warnings

import pytest
import torch

from official_reference import (OfficialReference, official_layout, random_official_state_dict,
                                read_key_file)
from trainer.masking import MultiRatioMasker
from trainer.model import AVSiam
from trainer.model.official import OfficialCheckpointError, convert_official_state_dict

torch.set_num_threads(2)
# A small official-layout geometry on the tiny width: 2 blocks, 64 x 128 fbank (8 x 4 patches), 48 px frames.
GEOMETRY = dict(dim=192, depth=2, audio_tokens=32, visual_side=3, decoder_dim=128, decoder_depth=1, num_classes=7)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_layout_generator_reproduces_the_official_key_files(kind):
    assert official_layout(kind, dim=768, depth=12, audio_tokens=512, visual_side=14) == read_key_file(kind)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_every_official_base_key_is_placed_or_reported(kind):
    """The full Base layout (shapes from the official classes), on the meta device."""
    shapes = read_key_file(kind)
    official = {"module." + k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with torch.device("meta"):
        model = AVSiam(size="base", num_classes=527)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, report = convert_official_state_dict(official, expected)
    assert report.unknown == [] and report.mismatched == []
    assert len(report.placed) + len(report.ignored) == len(shapes)
    assert set(report.unplaced) == set(shapes) - set(report.placed)
    used = set(converted)
    if kind == "finetune":      # everything but the decoder
        assert report.missing and all(k.startswith("decoder.") for k in report.missing)
    else:                       # everything but the classification heads
        assert report.missing and all(k.startswith("head_") for k in report.missing)
    assert used | set(report.missing) == set(expected)
    assert any("ast_base" in k for k in report.ignored) == (kind == "pretrain")


@pytest.fixture(scope="module")
def finetune_pair():
    """An official fine-tuning state dict (float32 values, 'module.' prefixes) and our model of it."""
    state = random_official_state_dict(official_layout("finetune", **GEOMETRY), seed=0, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a clean official checkpoint loads without warnings
        model, report = AVSiam.from_official(state, size="tiny", return_report=True)
    reference = OfficialReference({k: v.double() for k, v in state.items()}, num_heads=3)
    return model.double().eval(), reference, report


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 64, 128, generator=g, dtype=torch.float64),
            torch.randn(batch, 3, 48, 48, generator=g, dtype=torch.float64))


def test_geometry_and_classes_are_read_from_the_checkpoint(finetune_pair):
    model, _, report = finetune_pair
    cfg = model.config
    assert (cfg.encoder_depth, cfg.audio_frames, cfg.image_size, cfg.num_classes) == (2, 64, 48, 7)
    assert report.unknown == [] and report.mismatched == []
    assert all(k.startswith("decoder.") for k in report.missing)


def test_outputs_equal_the_official_forward_in_all_three_modes(finetune_pair):
    model, ref, _ = finetune_pair
    fbank, frames = _inputs()
    with torch.no_grad():
        pairs = [(model.classify(audio=fbank), ref.audioonly(fbank)),
                 (model.classify(visual=frames), ref.videoonly(frames)),
                 (model.classify(audio=fbank, visual=frames), ref.mm(fbank, frames)),
                 (model.embed_audio(fbank), ref.retrieval(fbank, frames)[0]),
                 (model.embed_visual(frames), ref.retrieval(fbank, frames)[1])]
    for ours, official in pairs:
        assert official.abs().max() > 0.1
        assert torch.allclose(ours, official, rtol=0, atol=1e-10), (ours - official).abs().max()


def test_masked_contrastive_embeddings_equal_the_official_mixed_ratio_encoder(finetune_pair):
    """forward_encoder_mmixed: the same kept tokens (in the official shuffled order) give the same means."""
    model, ref, _ = finetune_pair
    fbank, frames = _inputs(batch=5, seed=2)
    masks = MultiRatioMasker(audio_grid=model.audio_grid, visual_grid=model.visual_grid)(
        5, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for packed in (False, True):
            a, v = model.contrastive_embeddings(fbank, frames, masks, packed=packed)
            want_a = ref.masked_mean(ref.audio_tokens_embedded(fbank), masks.audio, "a", g)
            want_v = ref.masked_mean(ref.visual_tokens_embedded(frames), masks.visual, "v", g)
            assert torch.allclose(a, want_a, atol=1e-10) and torch.allclose(v, want_v, atol=1e-10)


def test_pretraining_checkpoint_fills_decoder_and_fusion():
    state = random_official_state_dict(official_layout("pretrain", **GEOMETRY), seed=3, dtype=torch.float32)
    model, report = AVSiam.from_official(state, size="tiny", num_classes=4, return_report=True)
    assert model.config.decoder_embed_dim == 128 and model.config.decoder_num_blocks == 1
    assert torch.equal(model.decoder.pred_v.weight, state["module.decoder_pred_v.weight"])
    assert torch.equal(model.decoder.blocks[0].norm1.weight, state["module.decoder_blocks.0.norm1.weight"])
    assert torch.equal(model.fusion[1].norm2.weight, state["module.mm_layer_2.norm2_a.weight"])
    assert torch.equal(model.embed_a.pos_embed, 2 * state["module.vit_base.pos_embed_a"])
    assert all(k.startswith("head_") for k in report.missing)


def test_unknown_keys_are_listed_and_refused_when_strict():
    state = random_official_state_dict(official_layout("finetune", **GEOMETRY), seed=4, dtype=torch.float32)
    state["module.vit_base.extra_adapter.weight"] = torch.zeros(3)
    with pytest.raises(OfficialCheckpointError, match="extra_adapter"):
        AVSiam.from_official(state, size="tiny")
    with pytest.warns(UserWarning, match="extra_adapter"):
        model, report = AVSiam.from_official(state, size="tiny", strict=False, return_report=True)
    assert report.unknown == ["vit_base.extra_adapter.weight"]
    assert "vit_base.extra_adapter.weight" in report.unplaced


def test_wrong_size_is_refused_with_the_reason():
    state = random_official_state_dict(official_layout("finetune", **GEOMETRY), seed=5, dtype=torch.float32)
    with pytest.raises(OfficialCheckpointError, match="width 192 does not match size 'base'"):
        AVSiam.from_official(state, size="base")
    with pytest.raises(OfficialCheckpointError, match="shared backbone"):
        AVSiam.from_official(state, size="tiny", share_backbone=False)
