"""The AVSiam model: shapes of every mode and size, shared-weight gradients, masks as inputs,
sub-batch vs packed groups, the separate-backbone variant, hooks and weight files."""
from __future__ import annotations

import pytest
import torch

from trainer.masking import MultiRatioMasker, random_masks
from trainer.model import AVSiam, AVSiamConfig

torch.set_num_threads(2)
SMALL = dict(audio_frames=128, image_size=64, depth=2)   # 8x8 audio and 4x4 visual patches


def _inputs(batch: int, frames: int, image: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 128, generator=g), torch.randn(batch, 3, image, image, generator=g)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return AVSiam(size="tiny", num_classes=5, **SMALL)


def test_tiny_every_mode_at_full_geometry():
    torch.manual_seed(0)
    m = AVSiam(size="tiny", num_classes=10).eval()
    assert m.embed_dim == 192 and m.audio_grid == (8, 64) and m.visual_grid == (14, 14)
    fbank, frames = _inputs(1, 1024, 224)
    masks = MultiRatioMasker(audio_grid=m.audio_grid, visual_grid=m.visual_grid)(5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert m.embed_audio(fbank).shape == (1, 192)
        assert m.embed_visual(frames).shape == (1, 192)
        assert m.classify(audio=fbank).shape == (1, 10)
        assert m.classify(visual=frames).shape == (1, 10)
        assert m.classify(audio=fbank, visual=frames).shape == (1, 10)
        a, v = m.contrastive_embeddings(fbank.expand(5, -1, -1), frames.expand(5, -1, -1, -1), masks, packed=True)
        assert a.shape == v.shape == (5, 192)
        pred_a, pred_v = m.reconstruct(fbank, frames, random_masks(1, 0.75, 512, 196))
    assert pred_a.shape == (1, 512, 256) and pred_v.shape == (1, 196, 768)


def test_base_on_cpu_batch_one():
    torch.manual_seed(0)
    m = AVSiam(size="base", num_classes=527).eval()
    fbank, frames = _inputs(1, 1024, 224)
    with torch.no_grad():
        assert m.classify(audio=fbank, visual=frames).shape == (1, 527)
        assert m.embed_visual(frames).shape == (1, 768)
    n_params = sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("decoder", "head")))
    assert 99e6 < n_params < 101e6   # the paper's "100M" for AVSiam-Base (encoder + fusion)


@pytest.mark.parametrize("size,dim,patch", [("large", 1024, 16), ("huge", 1280, 14)])
def test_large_and_huge_shapes_on_meta_device(size, dim, patch):
    with torch.device("meta"):
        m = AVSiam(size=size, num_classes=309)
        fbank, frames = torch.empty(2, 1024, 128), torch.empty(2, 3, 224, 224)
        assert m.embed_audio(fbank).shape == (2, dim)
        assert m.embed_visual(frames).shape == (2, dim)
        for kwargs in (dict(audio=fbank), dict(visual=frames), dict(audio=fbank, visual=frames)):
            assert m.classify(**kwargs).shape == (2, 309)
    grid = (128 // patch, 1024 // patch)
    assert m.audio_grid == grid and m.embed_a.num_tokens == (657 if size == "huge" else 512)


def test_gradients_reach_shared_weights_from_both_modalities(small):
    fbank, frames = _inputs(2, 128, 64)
    for modality, embed, inp in (("a", small.embed_audio, fbank), ("v", small.embed_visual, frames)):
        small.zero_grad(set_to_none=True)
        embed(inp).pow(2).sum().backward()
        other = "v" if modality == "a" else "a"
        for block in small.blocks:
            assert block.attn.qkv.weight.grad.abs().sum() > 0 and block.mlp.fc2.weight.grad.abs().sum() > 0
            assert getattr(block, f"norm1_{modality}").weight.grad.abs().sum() > 0
            assert getattr(block, f"norm1_{other}").weight.grad is None
        assert getattr(small, f"embed_{other}").proj.weight.grad is None
    assert not hasattr(small.blocks[0], "attn_a")


def test_separate_backbone_gives_audio_its_own_attention_and_mlp():
    torch.manual_seed(0)
    m = AVSiam(size="tiny", num_classes=5, share_backbone=False, **SMALL)
    shared = AVSiam(size="tiny", num_classes=5, **SMALL)
    extra = sum(p.numel() for n, p in m.named_parameters() if ".attn_a." in n or ".mlp_a." in n)
    assert extra > 0
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in shared.parameters()) + extra
    fbank, _ = _inputs(2, 128, 64)
    m.embed_audio(fbank).sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad is None and m.blocks[0].attn_a.qkv.weight.grad.abs().sum() > 0
    # both encoders start from the same weights
    assert torch.equal(m.blocks[1].attn_a.qkv.weight, m.blocks[1].attn.qkv.weight)


def test_packed_groups_equal_sub_batches_and_masks_replay(small):
    small.eval()
    fbank, frames = _inputs(7, 128, 64)
    masker = MultiRatioMasker(audio_grid=small.audio_grid, visual_grid=small.visual_grid)
    masks = masker(7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a1, v1 = small.contrastive_embeddings(fbank, frames, masks)
        a2, v2 = small.contrastive_embeddings(fbank, frames, masks, packed=True)
        a3, v3 = small.contrastive_embeddings(fbank, frames, masks)                 # replay
        a4, _ = small.contrastive_embeddings(fbank[2:5], frames[2:5], masks[2:5])   # a chunk
        other = masker(7, generator=torch.Generator().manual_seed(4))
        a5, _ = small.contrastive_embeddings(fbank, frames, other)
        full_a = small.embed_audio(fbank)
    assert torch.allclose(a1, a2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)
    assert torch.equal(a1, a3) and torch.equal(v1, v3)
    assert torch.allclose(a4, a1[2:5], atol=1e-5)
    assert not torch.allclose(a1, a5, atol=1e-3)
    unmasked = (~masks.audio).all(dim=1)                     # the ratio-0 group sees every token
    assert unmasked.any() and torch.allclose(a1[unmasked], full_a[unmasked], atol=1e-5)


def test_packed_gradients_equal_sub_batch_gradients(small):
    small.train()
    fbank, frames = _inputs(5, 128, 64, seed=2)
    masks = MultiRatioMasker(audio_grid=small.audio_grid, visual_grid=small.visual_grid)(5, generator=torch.Generator().manual_seed(0))
    grads = []
    for packed in (False, True):
        small.zero_grad(set_to_none=True)
        a, v = small.contrastive_embeddings(fbank, frames, masks, packed=packed)
        (a * v).sum().backward()
        grads.append(small.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_grad_checkpointing_keeps_values_and_gradients(small):
    small.train()
    fbank, frames = _inputs(2, 128, 64)
    masks = random_masks(2, 0.75, 64, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for enable in (False, True):
        small.set_grad_checkpointing(enable)
        small.zero_grad(set_to_none=True)
        loss = small.reconstruction_loss(fbank, frames, masks)["loss"]
        loss.backward()
        results.append((loss.detach(), small.blocks[1].mlp.fc1.weight.grad.clone(),
                        small.decoder.blocks[0].attn.qkv.weight.grad.clone()))
    small.set_grad_checkpointing(False)
    for x, y in zip(*results):
        assert torch.allclose(x, y, atol=1e-6)


def test_reconstruction_learns_a_fixed_batch():
    torch.manual_seed(0)
    m = AVSiam(size="tiny", num_classes=5, **SMALL)
    fbank, frames = _inputs(4, 128, 64)
    masks = random_masks(4, 0.75, 64, 16, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = m.reconstruction_loss(fbank, frames, masks)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_hooks_dispatch_and_reset(small):
    names = dict(small.named_parameters())
    assert small.no_weight_decay() <= set(names)
    fbank, frames = _inputs(2, 128, 64)
    small.eval()
    with torch.no_grad():
        assert torch.equal(small("embed_audio", fbank), small.embed_audio(fbank))
        assert torch.equal(small("classify", audio=fbank, visual=frames), small.classify(audio=fbank, visual=frames))
    with pytest.raises(ValueError, match="unknown task"):
        small("train")


def test_audio_token_layout_is_frequency_major(small):
    """Changing only the highest mel bins of one time span moves the matching frequency row's patch."""
    fbank, _ = _inputs(1, 128, 64)
    changed = fbank.clone()
    changed[:, 16:32, 112:128] += 5.0   # time patch 1, frequency patch 7
    with torch.no_grad():
        diff = (small.tokens(audio=changed) - small.tokens(audio=fbank)).abs().sum(-1)[0]
    assert diff.nonzero().flatten().tolist() == [7 * 8 + 1]


def test_bad_inputs_are_refused_clearly(small):
    fbank, frames = _inputs(2, 128, 64)
    with pytest.raises(ValueError, match="patch grid"):
        small.embed_audio(torch.randn(2, 256, 128))
    with pytest.raises(ValueError, match="fbank"):
        small.embed_audio(torch.randn(2, 1, 128, 128))
    with pytest.raises(ValueError, match="needs audio"):
        small.classify()
    uneven = MultiRatioMasker(audio_grid=small.audio_grid, visual_grid=small.visual_grid)(5)
    with pytest.raises(ValueError, match="one count"):
        small.reconstruction_loss(fbank[:1].repeat(5, 1, 1), frames[:1].repeat(5, 1, 1, 1), uneven)
    with pytest.raises(ValueError, match="unknown model size"):
        AVSiamConfig(size="giant")


def test_timm_weights_load_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=21843)
    path = tmp_path / "vit_tiny.safetensors"
    save_file(source.state_dict(), path)
    m = AVSiam(size="tiny", num_classes=3, pretrained=str(path), image_size=112)
    assert torch.equal(m.embed_v.proj.weight, source.patch_embed.proj.weight)
    assert torch.allclose(m.embed_a.proj.weight, source.patch_embed.proj.weight.mean(dim=1, keepdim=True))
    assert torch.equal(m.blocks[5].attn.qkv.weight, source.blocks[5].attn.qkv.weight)
    assert torch.equal(m.blocks[5].norm2_a.weight, source.blocks[5].norm2.weight)
    assert torch.equal(m.fusion[0].mlp.fc1.weight, source.blocks[10].mlp.fc1.weight)
    assert torch.equal(m.fusion[1].attn.proj.weight, source.blocks[11].attn.proj.weight)
    assert m.embed_v.pos_embed.shape == (1, 49, 192)        # resampled by timm to 112 px
    with pytest.raises(ValueError, match="not vit_base_patch16_224 weights"):
        AVSiam(size="base", pretrained=str(path), depth=1)


def test_save_and_load_round_trip(small, tmp_path):
    small.eval()
    path = tmp_path / "m.safetensors"
    small.save(path)
    loaded = AVSiam.load(path).eval()
    assert loaded.config == small.config
    fbank, frames = _inputs(2, 128, 64)
    with torch.no_grad():
        assert torch.equal(loaded.classify(audio=fbank, visual=frames), small.classify(audio=fbank, visual=frames))
    relabelled = AVSiam.load(path, num_classes=9)
    assert relabelled.head_av.fc.out_features == 9 and relabelled.config.num_classes == 9
    assert torch.equal(relabelled.blocks[1].attn.qkv.weight, small.blocks[1].attn.qkv.weight)


def test_pack_plan_puts_every_kept_token_once_in_fewer_rows():
    from trainer.model.packing import PackPlan
    masks = MultiRatioMasker()(10, generator=torch.Generator().manual_seed(0))   # 512 audio, 196 visual
    for mask, capacity in ((masks.audio, 512), (masks.visual, 196)):
        plan = PackPlan.from_mask(mask)
        assert plan.token_index.shape == (6, capacity)        # 5 groups pair up into 3 rows, twice
        kept = torch.nonzero(~mask.flatten()).flatten()
        placed = plan.token_index[plan.sample >= 0]
        assert torch.equal(placed.sort().values, kept)        # each kept token exactly once
        assert torch.equal(plan.sample[plan.sample >= 0], placed // mask.shape[1])
        attn = plan.attention_mask()[:, 0]
        same = plan.sample[:, :, None] == plan.sample[:, None, :]
        assert torch.equal(attn, same) and not attn.all()     # block-diagonal, never across samples


def test_a_mask_dropping_every_token_is_refused(small):
    fbank, frames = _inputs(2, 128, 64)
    masks = random_masks(2, 0.5, 64, 16)
    empty = masks.audio.clone()
    empty[1] = True
    from trainer.masking import TokenMasks
    with pytest.raises(ValueError, match="drops every token"):
        small.contrastive_embeddings(fbank, frames, TokenMasks(empty, masks.visual))


def test_model_libraries_import_no_app_code():
    """Library direction: the model, masking and loss modules pull in no CLI, engine or DeepSpeed."""
    import subprocess
    import sys
    code = ("import sys, trainer.model, trainer.masking, trainer.losses, trainer.model.official, "
            "trainer.model.timm_export, trainer.model.info; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'cluster', 'pipeline', 'shards') "
            "or m.startswith(('trainer.engine', 'trainer.pretrain')) or m.endswith('_command')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
