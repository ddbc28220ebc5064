"""Model sizes and the typed configuration of an AVSiam model.

A size names the timm ViT the shared backbone is built on, plus the MAE decoder that goes with it.
`AVSiamConfig` holds every choice a model is built from; it is saved with exported weights (as JSON
metadata) so a checkpoint rebuilds the same model.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class SizeSpec:
    """One model size: the timm ViT (architecture and the paper's weights tag) and its decoder."""

    timm_name: str
    weights_tag: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int


SIZES: dict[str, SizeSpec] = {
    # Tests and the CPU demo: the ViT-Ti geometry with a small decoder.
    "tiny": SizeSpec("vit_tiny_patch16_224", "augreg_in21k", 192, 12, 3, 16, 128, 2, 4),
    # The paper's sizes; the decoder is the Base code's (512-d, 8 blocks, 16 heads). Weights tags: the
    # ImageNet-21k ViT each was pretrained from. Base: the official code loads the original Google
    # in-21k ViT-B/16 (jx_vit_base_patch16_224_in21k) over the augreg weights = timm's orig_in21k;
    # Large and Huge as the paper names them (augreg_in21k, orig_in21k).
    "base": SizeSpec("vit_base_patch16_224", "orig_in21k", 768, 12, 12, 16, 512, 8, 16),
    "large": SizeSpec("vit_large_patch16_224", "augreg_in21k", 1024, 24, 16, 16, 512, 8, 16),
    "huge": SizeSpec("vit_huge_patch14_224", "orig_in21k", 1280, 32, 16, 14, 512, 8, 16),
}

AUDIO_POS_INITS = ("grid", "sequence")
FROM_SCRATCH = "none"   # model.pretrained=none: random initialisation chosen on purpose


@dataclass(kw_only=True)
class AVSiamConfig:
    """Everything an AVSiam model is built from. `None` fields take the size's value."""

    size: str = "base"
    num_classes: int = 527
    audio_frames: int = 1024          # fbank frames (time); tokens = frames // patch along time
    mel_bins: int = 128               # fbank bins (frequency)
    image_size: int = 224             # square RGB frames
    depth: int | None = None          # encoder blocks; None = the size's
    share_backbone: bool = True       # False: separate attention/MLP per modality (AVSep / CAV-MAE-like)
    # Local timm ViT weights (.safetensors/.pth) of `timm_weights`; never downloaded. None: random
    # initialisation (pretraining a paper size refuses that; "none" starts from scratch on purpose).
    pretrained: str | None = None
    decoder_dim: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    fusion_depth: int = 2             # audio-visual blocks, initialised from the last encoder blocks
    drop_path_rate: float = 0.0
    # Initial audio positions from the ViT's 2D grid: "grid" = bilinear 2D resize onto the
    # (freq x time) patch grid; "sequence" = the official code's 1D nearest resize of the flat sequence.
    audio_pos_init: str = "grid"
    block_norm_eps: float = 1e-5      # official blocks use torch's LayerNorm default; final norms 1e-6

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"unknown model size {self.size!r}; choose from {', '.join(SIZES)}")
        if self.audio_pos_init not in AUDIO_POS_INITS:
            raise ValueError(f"audio_pos_init must be one of {AUDIO_POS_INITS}, got {self.audio_pos_init!r}")
        p = self.spec.patch_size
        if self.audio_frames < p or self.mel_bins < p:
            raise ValueError(f"audio input {self.audio_frames}x{self.mel_bins} is smaller than one {p}x{p} patch")
        if self.image_size % p:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size {p}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.encoder_depth < 1 or self.fusion_depth < 0:
            raise ValueError(f"depth must be >= 1 and fusion_depth >= 0 (got {self.encoder_depth}, {self.fusion_depth})")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(f"decoder_dim {self.decoder_embed_dim} is not divisible by {self.decoder_num_heads} heads")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def spec(self) -> SizeSpec:
        return SIZES[self.size]

    @property
    def timm_weights(self) -> str:
        """The timm model.tag whose weights this size starts from, e.g. vit_base_patch16_224.orig_in21k."""
        return f"{self.spec.timm_name}.{self.spec.weights_tag}"

    @property
    def pretrained_file(self) -> str | None:
        """The weights file to load, None for random initialisation (pretrained null or "none")."""
        return None if self.pretrained in (None, FROM_SCRATCH) else self.pretrained

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def encoder_depth(self) -> int:
        return self.spec.depth if self.depth is None else self.depth

    @property
    def decoder_embed_dim(self) -> int:
        return self.spec.decoder_dim if self.decoder_dim is None else self.decoder_dim

    @property
    def decoder_num_blocks(self) -> int:
        return self.spec.decoder_depth if self.decoder_depth is None else self.decoder_depth

    @property
    def decoder_num_heads(self) -> int:
        return self.spec.decoder_heads if self.decoder_heads is None else self.decoder_heads

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) of audio patches; tokens are frequency-major."""
        p = self.spec.patch_size
        return self.mel_bins // p, self.audio_frames // p

    @property
    def visual_grid(self) -> tuple[int, int]:
        p = self.spec.patch_size
        return self.image_size // p, self.image_size // p

    def to_json(self) -> str:
        """The config as JSON, without the machine-specific `pretrained` path."""
        fields = dataclasses.asdict(self)
        fields["pretrained"] = None
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, **overrides) -> "AVSiamConfig":
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"model config has unknown fields {unknown}; written by a newer version?")
        fields.update(overrides)
        return cls(**fields)
