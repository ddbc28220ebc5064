"""`avsiam synth`: a deterministic synthetic audio-visual dataset of real encoded clips.

    from pipeline.synth import SynthConfig, write_dataset
    summary = write_dataset(SynthConfig(out="data/synth", clips=40, classes=4, seed=0))

Each class pairs a visual appearance (shape, texture, colour, motion) with a sound (timbre, register,
pitch pattern, rhythm); every clip varies both inside its class. Metadata comes in AudioSet and
VGGSound formats. Same parameters, same bytes, whatever the number of workers.
"""
from pipeline.synth.classes import ClassRecipe, make_classes
from pipeline.synth.config import SynthConfig, SynthConfigError
from pipeline.synth.dataset import write_dataset
from pipeline.synth.encode import FORMATS, EncodeError

__all__ = ["ClassRecipe", "EncodeError", "FORMATS", "SynthConfig", "SynthConfigError",
           "make_classes", "write_dataset"]
