"""The AVSiam model: one timm ViT shared by audio spectrograms and video frames.

    from trainer.model import AVSiam
    m = AVSiam(size="base", num_classes=527)
"""
from .avsiam import AVSiam
from .config import SIZES, AVSiamConfig, SizeSpec

__all__ = ["AVSiam", "AVSiamConfig", "SIZES", "SizeSpec"]
