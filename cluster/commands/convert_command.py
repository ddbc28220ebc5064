"""`avsiam convert`: an official AVSiam checkpoint (.pth) -> our safetensors, with a full key report."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-official", required=True, metavar="IN.pth",
                        help="official checkpoint (read with torch.load weights_only=True; pickled code is refused)")
    parser.add_argument("--out", required=True, metavar="OUT.safetensors")
    parser.add_argument("--size", default="base", choices=("tiny", "base", "large", "huge"))
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the heads when the checkpoint has none (pretraining checkpoints)")
    parser.add_argument("--no-strict", dest="strict", action="store_false",
                        help="convert even when official keys are unknown to the converter (they are listed)")


def official_training_facts():
    """What the official checkpoints were trained on: CAV-MAE's fbank normalisation, (x + 5.081) /
    4.4849 for AudioSet and VGGSound alike, so evaluation uses it by default. Labels stay unknown."""
    from shards.format import DEFAULT_FBANK_MEAN, DEFAULT_FBANK_STD
    from trainer.model.file_metadata import ModelFacts

    return ModelFacts(normalization={"mean": DEFAULT_FBANK_MEAN, "std": DEFAULT_FBANK_STD, "source": "paper"})


def main(args: argparse.Namespace) -> int:
    from trainer.checkpoint_io import CheckpointError
    from trainer.model import AVSiam
    from trainer.model.official import OfficialCheckpointError

    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        model, report = AVSiam.from_official(args.from_official, size=args.size, strict=args.strict,
                                             return_report=True, **overrides)
    except (CheckpointError, OfficialCheckpointError) as exc:
        print(f"avsiam convert: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    model.facts = official_training_facts()
    model.save(args.out)
    cfg = model.config
    print(f"wrote {args.out}: size {cfg.size}, depth {cfg.encoder_depth}, {cfg.num_classes} classes, "
          f"audio {cfg.audio_frames}x{cfg.mel_bins}, image {cfg.image_size}")
    return 0
