"""AVSiam: one ViT for audio spectrograms and video frames.

Every input mode is a short path through the same pieces:
    tokens = embed_{a,v}(input)                       patch + positions (per modality)
    feats  = encode(tokens, modality)                 shared blocks with that modality's norms, final norm
    audio-only   head_a(mean(feats_a))
    visual-only  head_v(mean(feats_v))
    audio-visual head_av([mean(fused[:Na]); mean(fused[Na:])]), fused = fusion([feats_a; feats_v])
Pretraining uses `contrastive_embeddings` (multi-ratio masks, sub-batches or one packed pass) and
`reconstruction_loss` (75% masks -> encoder -> fusion -> MAE decoder).

Where the paper and the official code differ, or the code has quirks, we chose:
- no `x + norm_pre(x)` doubling (folded into imported official weights, see official.py);
- fusion blocks start from the last two encoder blocks (official fine-tuning code; the pretraining
  code copies block 11 twice) and, like the official code, use one (audio) norm pair for all tokens;
- the reconstruction branch encodes audio with the shared blocks and audio norms (the Base code used
  `ast_base`, an unreleased deep copy run with plain norms);
- audio positions start from a 2D bilinear resize of the ViT grid (`audio_pos_init="sequence"`
  gives the official 1D nearest resize); decoder positions start as 2D sin-cos and are trained
  (official: zeros, trained); the decoder has 8 blocks as the Base code (the paper says 6);
- LayerNorm eps 1e-5 in blocks and heads, 1e-6 in the final norms, as the official modules.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import torch
import torch.nn as nn

from trainer.checkpoint_io import load_state_dict_file, save_state_dict_file
from trainer.losses import masked_patch_mse
from trainer.masking import TokenMasks

from .blocks import SiameseBlock, copy_layer_norm, fusion_block_from_timm
from .config import AVSiamConfig
from .decoder import MAEDecoder
from .embed import PatchPosEmbed, fbank_as_image, patchify
from .heads import ClassifierHead
from .parts import group_matcher
from .init import create_timm_trunk, drop_path_rates, init_audio_embed, init_visual_embed
from .packing import PackPlan, gather_tokens, run_blocks, split_by_count, uniform_count, visible_indices

CONFIG_METADATA_KEY = "avsiam_config"


class AVSiam(nn.Module):
    def __init__(self, size: str = "base", num_classes: int = 527, **overrides) -> None:
        super().__init__()
        cfg = AVSiamConfig(size=size, num_classes=num_classes, **overrides)
        self.config = cfg
        dim, spec = cfg.embed_dim, cfg.spec
        trunk = create_timm_trunk(cfg)
        self.embed_a = PatchPosEmbed(1, dim, spec.patch_size, cfg.audio_grid)
        self.embed_v = PatchPosEmbed(3, dim, spec.patch_size, cfg.visual_grid)
        init_visual_embed(self.embed_v, trunk)
        init_audio_embed(self.embed_a, self.embed_v, cfg.audio_pos_init)
        rates = drop_path_rates(cfg.drop_path_rate, cfg.encoder_depth)
        # Fusion blocks start as copies of the last encoder blocks (the official fine-tuning code).
        last = list(trunk.blocks)[-cfg.fusion_depth:] if cfg.fusion_depth else []
        last = [last[0]] * (cfg.fusion_depth - len(last)) + last  # depth < fusion_depth: repeat the first
        fusion = [fusion_block_from_timm(b, eps=cfg.block_norm_eps) for b in last]
        self.blocks = nn.ModuleList([
            SiameseBlock.from_timm(b, eps=cfg.block_norm_eps, drop_path=rates[i], shared=cfg.share_backbone)
            for i, b in enumerate(trunk.blocks)])
        self.norm_a = copy_layer_norm(trunk.norm, trunk.norm.eps)
        self.norm_v = copy_layer_norm(trunk.norm, trunk.norm.eps)
        self.fusion = nn.ModuleList(fusion)
        del trunk
        self.decoder = MAEDecoder(dim, cfg.decoder_embed_dim, cfg.decoder_num_blocks, cfg.decoder_num_heads,
                                  patch_size=spec.patch_size, audio_grid=cfg.audio_grid,
                                  visual_grid=cfg.visual_grid, eps=cfg.block_norm_eps)
        self.head_a = ClassifierHead(dim, num_classes)
        self.head_v = ClassifierHead(dim, num_classes)
        self.head_av = ClassifierHead(2 * dim, num_classes)
        self.grad_checkpointing = False
        self.facts = None   # ModelFacts (file_metadata.py): training normalisation and labels, if known

    # ----------------------------------------------------------------- facts
    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def audio_grid(self) -> tuple[int, int]:
        return self.config.audio_grid

    @property
    def visual_grid(self) -> tuple[int, int]:
        return self.config.visual_grid

    # ------------------------------------------------------------- features
    def tokens(self, audio: torch.Tensor | None = None, visual: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded tokens of exactly one input: fbank [B, T, F] or frames [B, 3, S, S]."""
        if (audio is None) == (visual is None):
            raise ValueError("tokens() takes exactly one of audio= or visual=")
        return self.embed_a(fbank_as_image(audio)) if audio is not None else self.embed_v(visual)

    def encode(self, tokens: torch.Tensor, modality: str, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens [B, n, D] of one modality -> final-normed tokens [B, n, D]."""
        x = run_blocks(self.blocks, tokens, modality, attn_mask, checkpointing=self.grad_checkpointing)
        return self.norm_a(x) if modality == "a" else self.norm_v(x)

    def fuse(self, audio_feats: torch.Tensor, visual_feats: torch.Tensor) -> torch.Tensor:
        """[B, na, D] + [B, nv, D] -> fused [B, na + nv, D] (the official code: audio norms for all)."""
        x = torch.cat([audio_feats, visual_feats], dim=1)
        return run_blocks(self.fusion, x, checkpointing=self.grad_checkpointing)

    def pooled(self, tokens: torch.Tensor, modality: str, mask: torch.Tensor | None = None,
               packed: bool = False) -> torch.Tensor:
        """Mean of the final-normed kept tokens per sample -> [B, D]. Masks may keep different counts."""
        if mask is None:
            return self.encode(tokens, modality).mean(dim=1)
        if mask.shape != tokens.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape[:2])}")
        if packed:
            if self.training and self.config.drop_path_rate > 0:
                raise ValueError("packed groups share rows, so per-sample drop-path is undefined; "
                                 "use packed=False with drop_path_rate > 0")
            plan = PackPlan.from_mask(mask)
            return plan.mean_per_sample(self.encode(plan.pack(tokens), modality, plan.attention_mask()))
        order, parts = [], []
        for samples, count in split_by_count(mask):
            kept = gather_tokens(tokens[samples], visible_indices(mask[samples], count))
            parts.append(self.encode(kept, modality).mean(dim=1))
            order.append(samples)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]

    # ------------------------------------------------------------ interface
    def embed_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, F] normalised -> [B, D] mean of final-normed tokens (not L2-normalised)."""
        return self.pooled(self.tokens(audio=fbank), "a")

    def embed_visual(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, 3, S, S] -> [B, D] mean of final-normed tokens (not L2-normalised)."""
        return self.pooled(self.tokens(visual=frames), "v")

    def classify(self, audio: torch.Tensor | None = None, visual: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, classes] of the mode given by the inputs: audio-only, visual-only or audio-visual."""
        if audio is None and visual is None:
            raise ValueError("classify() needs audio=, visual= or both")
        feats_a = self.encode(self.tokens(audio=audio), "a") if audio is not None else None
        feats_v = self.encode(self.tokens(visual=visual), "v") if visual is not None else None
        if feats_v is None:
            return self.head_a(feats_a.mean(dim=1))
        if feats_a is None:
            return self.head_v(feats_v.mean(dim=1))
        fused = self.fuse(feats_a, feats_v)
        num_a = feats_a.shape[1]
        return self.head_av(torch.cat([fused[:, :num_a].mean(dim=1), fused[:, num_a:].mean(dim=1)], dim=-1))

    def contrastive_embeddings(self, fbank: torch.Tensor, frames: torch.Tensor, masks: TokenMasks | None = None,
                               packed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, D] audio, [B, D] visual) pooled over the tokens each mask keeps (multi-ratio groups)."""
        mask_a = masks.audio if masks is not None else None
        mask_v = masks.visual if masks is not None else None
        return (self.pooled(self.tokens(audio=fbank), "a", mask_a, packed),
                self.pooled(self.tokens(visual=frames), "v", mask_v, packed))

    def reconstruct(self, fbank: torch.Tensor, frames: torch.Tensor, masks: TokenMasks
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted pixels of every patch (audio [B, Na, p*p], visual [B, Nv, 3p*p]) from the kept tokens."""
        kept = []
        for tokens, mask, name in ((self.tokens(audio=fbank), masks.audio, "audio"),
                                   (self.tokens(visual=frames), masks.visual, "visual")):
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"{name} mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape[:2])}")
            kept.append(gather_tokens(tokens, visible_indices(mask, uniform_count(mask, name))))
        kept_a, kept_v = kept
        fused = self.fuse(self.encode(kept_a, "a"), self.encode(kept_v, "v"))
        num_a = kept_a.shape[1]
        return self.decoder(fused[:, :num_a], fused[:, num_a:], masks.audio, masks.visual)

    def reconstruction_loss(self, fbank: torch.Tensor, frames: torch.Tensor, masks: TokenMasks,
                            norm_pix_loss: bool = False) -> dict[str, torch.Tensor]:
        """{loss, loss_audio, loss_visual}: MSE between predicted and true pixels of the dropped patches."""
        pred_a, pred_v = self.reconstruct(fbank, frames, masks)
        p = self.config.spec.patch_size
        target_a = patchify(fbank_as_image(fbank), p, self.audio_grid)
        target_v = patchify(frames, p, self.visual_grid)
        loss_a = masked_patch_mse(pred_a, target_a, masks.audio, norm_pix_loss)
        loss_v = masked_patch_mse(pred_v, target_v, masks.visual, norm_pix_loss)
        return {"loss": loss_a + loss_v, "loss_audio": loss_a, "loss_visual": loss_v}

    def forward(self, task: str, *args, **kwargs):
        """One entry for wrappers that must call the module itself (e.g. DeepSpeed ZeRO-3):
        task in {contrastive, reconstruction, classify, embed_audio, embed_visual}."""
        methods = {"contrastive": self.contrastive_embeddings, "reconstruction": self.reconstruction_loss,
                   "classify": self.classify, "embed_audio": self.embed_audio, "embed_visual": self.embed_visual}
        if task not in methods:
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(methods)}")
        return methods[task](*args, **kwargs)

    # ---------------------------------------------------------------- hooks
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder, fusion and decoder blocks in backward (timm's non-reentrant checkpoint)."""
        self.grad_checkpointing = enable
        self.decoder.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Positional embeddings and learned tokens (timm's convention; norms/biases are the optimizer's call)."""
        return {"embed_a.pos_embed", "embed_v.pos_embed", "decoder.pos_embed_a", "decoder.pos_embed_v",
                "decoder.mask_token", "decoder.modality_a", "decoder.modality_v"}

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Model part -> regex of its parameter names (timm's convention; see `parts.py`)."""
        return group_matcher(self.config.share_backbone, coarse)

    def reset_classifier(self, num_classes: int) -> None:
        for head in (self.head_a, self.head_v, self.head_av):
            head.reset(num_classes)
        if self.facts is not None and num_classes != self.config.num_classes:
            self.facts = dataclasses.replace(self.facts, labels=None)   # the old vocabulary is gone
        self.config.num_classes = num_classes

    # ------------------------------------------------------------ weight io
    def save(self, path: str | os.PathLike) -> None:
        """fp32 weights as safetensors, with the config so `AVSiam.load` rebuilds the same model."""
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict().items()}
        from .file_metadata import metadata_entries
        save_state_dict_file(state, path, metadata_entries(self.config, self.facts))

    @classmethod
    def from_config(cls, cfg: AVSiamConfig) -> "AVSiam":
        """The model `cfg` describes (fresh weights, or the timm weights `cfg.pretrained` names)."""
        return cls(**dataclasses.asdict(cfg))

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> "AVSiam":
        """A model saved by `save` (or `avsiam convert`/`export`); overrides change config fields
        (shape-free ones such as drop_path_rate; a different num_classes gives fresh heads)."""
        state, metadata = load_state_dict_file(path, with_metadata=True)
        if CONFIG_METADATA_KEY not in metadata:
            raise ValueError(f"{path}: no {CONFIG_METADATA_KEY!r} metadata; not written by avsiam "
                             "(official checkpoints load with AVSiam.from_official)")
        num_classes = overrides.pop("num_classes", None)
        model = cls.from_config(AVSiamConfig.from_json(metadata[CONFIG_METADATA_KEY], **overrides))
        model.load_state_dict(state)
        from .file_metadata import facts_from_metadata
        model.facts = facts_from_metadata(metadata)
        if num_classes is not None and num_classes != model.config.num_classes:  # fresh heads for another label set
            model.reset_classifier(num_classes)
        return model

    @classmethod
    def from_official(cls, source: str | os.PathLike | Mapping[str, torch.Tensor], size: str = "base",
                      **kwargs) -> "AVSiam":
        """A model holding an official AVSiam checkpoint (path or state dict); see `official.py`."""
        from .official import load_official
        return load_official(cls, source, size=size, **kwargs)
