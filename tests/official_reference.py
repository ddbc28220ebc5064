"""An independent re-implementation of the OFFICIAL AVSiam forward, computed straight from an
official-layout state dict (github GenjiB/AVSiam, src/models/cav_mae_base.py), for equivalence tests.

It follows the official code literally: official key names, `x = x + norm_pre(x)` doubling with
norm_pre = Identity, the modality-suffixed norms in encoder blocks, fusion blocks called with
modality 'a' (audio norms for all tokens), eps 1e-5 in blocks and heads (torch LayerNorm default)
and 1e-6 in the ViT's final norms (timm), explicit softmax attention. It shares no code with
trainer.model.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

DATA = Path(__file__).parent / "data"


def read_key_file(kind: str) -> dict[str, tuple[int, ...]]:
    """key -> shape from tests/data/official_avsiam_base_{kind}_keys.txt (read from the official classes)."""
    shapes = {}
    for line in (DATA / f"official_avsiam_base_{kind}_keys.txt").read_text().splitlines():
        m = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip())
        if m:
            shapes[m.group(1)] = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
    return shapes


def official_layout(kind: str, *, dim: int, depth: int, audio_tokens: int, visual_side: int, patch: int = 16,
                    decoder_dim: int = 512, decoder_depth: int = 8, num_classes: int = 527,
                    imagenet_classes: int = 21843) -> dict[str, tuple[int, ...]]:
    """key -> shape of the official CAVMAE_BASE ("pretrain") or CAVMAEFT_BASE ("finetune") model."""
    def block(prefix: str, d: int) -> dict:
        out = {}
        for norm in ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v"):
            out[f"{prefix}.{norm}.weight"] = (d,)
            out[f"{prefix}.{norm}.bias"] = (d,)
        out.update({f"{prefix}.attn.qkv.weight": (3 * d, d), f"{prefix}.attn.qkv.bias": (3 * d,),
                    f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
                    f"{prefix}.mlp.fc1.weight": (4 * d, d), f"{prefix}.mlp.fc1.bias": (4 * d,),
                    f"{prefix}.mlp.fc2.weight": (d, 4 * d), f"{prefix}.mlp.fc2.bias": (d,)})
        return out

    def vit(prefix: str) -> dict:
        out = {f"{prefix}.cls_token": (1, 1, dim), f"{prefix}.pos_embed": (1, visual_side ** 2 + 1, dim),
               f"{prefix}.pos_embed_a": (1, audio_tokens, dim),
               f"{prefix}.patch_embed.proj.weight": (dim, 3, patch, patch), f"{prefix}.patch_embed.proj.bias": (dim,)}
        for i in range(depth):
            out.update(block(f"{prefix}.blocks.{i}", dim))
        out.update({f"{prefix}.norm.weight": (dim,), f"{prefix}.norm.bias": (dim,),
                    f"{prefix}.head.weight": (imagenet_classes, dim), f"{prefix}.head.bias": (imagenet_classes,),
                    f"{prefix}.patch_embed_a.proj.weight": (dim, 1, patch, patch),
                    f"{prefix}.patch_embed_a.proj.bias": (dim,),
                    f"{prefix}.norm_a.weight": (dim,), f"{prefix}.norm_a.bias": (dim,)})
        return out

    shapes = vit("vit_base")
    for i in range(depth):
        shapes.update(block(f"my_blocks.{i}", dim))
    shapes.update({"my_patch_embed.proj.weight": (dim, 3, patch, patch), "my_patch_embed.proj.bias": (dim,),
                   "my_patch_embed_a.proj.weight": (dim, 1, patch, patch), "my_patch_embed_a.proj.bias": (dim,)})
    if kind == "pretrain":
        shapes.update({"decoder_pos_embed_a": (1, audio_tokens, decoder_dim),
                       "decoder_pos_embed_v": (1, visual_side ** 2, decoder_dim),
                       "mask_token": (1, 1, decoder_dim), "decoder_modality_a": (1, 1, decoder_dim),
                       "decoder_modality_v": (1, 1, decoder_dim)})
        shapes.update(vit("ast_base"))
    else:
        for name, width in (("mlp_head", dim), ("mlp_head_a", dim), ("mlp_head_mm", 2 * dim), ("mlp_head_mm_v2", dim)):
            shapes.update({f"{name}.0.weight": (width,), f"{name}.0.bias": (width,),
                           f"{name}.1.weight": (num_classes, width), f"{name}.1.bias": (num_classes,)})
    shapes.update(block("mm_layer_1", dim))
    shapes.update(block("mm_layer_2", dim))
    if kind == "pretrain":
        shapes.update({"decoder_embed.weight": (decoder_dim, dim), "decoder_embed.bias": (decoder_dim,)})
        for i in range(decoder_depth):
            shapes.update(block(f"decoder_blocks.{i}", decoder_dim))
        shapes.update({"decoder_norm.weight": (decoder_dim,), "decoder_norm.bias": (decoder_dim,),
                       "decoder_pred_a.weight": (patch * patch, decoder_dim), "decoder_pred_a.bias": (patch * patch,),
                       "decoder_pred_v.weight": (3 * patch * patch, decoder_dim),
                       "decoder_pred_v.bias": (3 * patch * patch,)})
    return shapes


def random_official_state_dict(shapes: dict, seed: int, dtype=torch.float64, prefix: str = "module.") -> dict:
    """Random values for every key; norms near 1, the rest small; my_blocks shares vit_base.blocks."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.startswith("my_blocks."):
            continue
        t = torch.randn(shape, generator=g, dtype=dtype)
        is_norm_weight = re.search(r"norm[^.]*\.weight$|mlp_head[^.]*\.0\.weight$", key)
        state[key] = 1.0 + 0.1 * t if is_norm_weight else 0.05 * t
    for key in shapes:
        if key.startswith("my_blocks."):
            state[key] = state["vit_base.blocks." + key[len("my_blocks."):]]
    return {prefix + k: v for k, v in state.items()}


class OfficialReference:
    """The official forward over an (unprefixed or prefixed) official state dict."""

    def __init__(self, state: dict, num_heads: int, patch: int = 16) -> None:
        self.p = {k.removeprefix("module."): v for k, v in state.items()}
        self.heads, self.patch = num_heads, patch
        self.depth = 1 + max(int(m.group(1)) for k in self.p if (m := re.match(r"vit_base\.blocks\.(\d+)\.", k)))

    def _ln(self, x, name, eps):
        return F.layer_norm(x, x.shape[-1:], self.p[f"{name}.weight"], self.p[f"{name}.bias"], eps)

    def _lin(self, x, name):
        return x @ self.p[f"{name}.weight"].t() + self.p[f"{name}.bias"]

    def _attn(self, x, name, keep=None):
        b, n, d = x.shape
        qkv = self._lin(x, f"{name}.qkv").reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)
        out = scores.softmax(dim=-1) @ v
        return self._lin(out.transpose(1, 2).reshape(b, n, d), f"{name}.proj")

    def block(self, x, name, modality):
        suffix = f"_{modality}" if modality else ""
        x = x + self._attn(self._ln(x, f"{name}.norm1{suffix}", 1e-5), f"{name}.attn")
        h = self._ln(x, f"{name}.norm2{suffix}", 1e-5)
        return x + self._lin(F.gelu(self._lin(h, f"{name}.mlp.fc1")), f"{name}.mlp.fc2")

    def _embed(self, image, conv, pos):
        x = F.conv2d(image, self.p[f"{conv}.weight"], self.p[f"{conv}.bias"], stride=self.patch)
        x = x.flatten(2).transpose(1, 2) + pos
        return x + x  # x = x + norm_pre(x), norm_pre = Identity

    def audio_tokens_embedded(self, fbank):
        return self._embed(fbank.unsqueeze(1).transpose(2, 3), "vit_base.patch_embed_a.proj", self.p["vit_base.pos_embed_a"])

    def visual_tokens_embedded(self, frames):
        return self._embed(frames, "vit_base.patch_embed.proj", self.p["vit_base.pos_embed"][:, 1:])

    def encode(self, x, modality):
        for i in range(self.depth):
            x = self.block(x, f"vit_base.blocks.{i}", modality)
        return self._ln(x, "vit_base.norm_a" if modality == "a" else "vit_base.norm", 1e-6)

    def _head(self, x, name):
        return self._lin(self._ln(x, f"{name}.0", 1e-5), f"{name}.1")

    def audioonly(self, fbank):
        return self._head(self.encode(self.audio_tokens_embedded(fbank), "a").mean(1), "mlp_head_a")

    def videoonly(self, frames):
        return self._head(self.encode(self.visual_tokens_embedded(frames), "v").mean(1), "mlp_head")

    def retrieval(self, fbank, frames):
        """Mean of the final-normed tokens of each modality (the retrieval embedding)."""
        return (self.encode(self.audio_tokens_embedded(fbank), "a").mean(1),
                self.encode(self.visual_tokens_embedded(frames), "v").mean(1))

    def mm(self, fbank, frames):
        a = self.encode(self.audio_tokens_embedded(fbank), "a")
        v = self.encode(self.visual_tokens_embedded(frames), "v")
        av = torch.cat([a, v], dim=1)
        av = self.block(av, "mm_layer_1", "a")
        av = self.block(av, "mm_layer_2", "a")
        num_a = a.shape[1]
        return self._head(torch.cat([av[:, :num_a].mean(1), av[:, num_a:].mean(1)], dim=-1), "mlp_head_mm")

    def masked_mean(self, tokens, mask, modality, generator):
        """forward_encoder_mmixed for one sample at a time: kept tokens in a random (shuffled) order."""
        out = []
        for i in range(tokens.shape[0]):
            kept = torch.nonzero(~mask[i]).squeeze(1)
            kept = kept[torch.randperm(kept.numel(), generator=generator)]
            out.append(self.encode(tokens[i:i + 1, kept], modality).mean(1))
        return torch.cat(out)


def official_tf_mask(batch: int, ratio: float, time: int = 64, freq: int = 8, seed: int = 0) -> torch.Tensor:
    """random_masking_structured(mode='tf') of the official code, literally, for masking statistics:
    per sample, Python's random.sample picks int(time * ratio * 0.7) time columns and (in a second
    loop) int(freq * ratio * 0.7) frequency rows; their tokens get the score 1.1 over torch.rand
    noise, the frequency-major sequence is argsorted and its first int(L * (1 - ratio)) tokens kept.
    Returns bool [batch, freq * time], True = dropped."""
    import random

    picker = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    tokens = freq * time
    keep = int(tokens * (1 - ratio))
    score = torch.rand(batch, freq, time, generator=generator)
    for i in range(batch):
        for column in picker.sample(range(time), int(time * ratio * 0.7)):
            score[i, :, column] = 1.1
    for i in range(batch):
        for row in picker.sample(range(freq), int(freq * ratio * 0.7)):
            score[i, row, :] = 1.1
    order = torch.argsort(score.reshape(batch, tokens), dim=1)
    dropped = torch.ones(batch, tokens)
    dropped[:, :keep] = 0
    return torch.gather(dropped, 1, torch.argsort(order, dim=1)).bool()
