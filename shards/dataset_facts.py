"""What a split's dataset.json says, read as untrusted input: typed, bounded, the file named.

A loader takes defaults from dataset.json (fbank statistics, frame size, frames per clip, the label
vocabulary's size and counts), so a damaged or hostile one could otherwise make every audio value
NaN (std NaN) or 1e30 (std 1e-30), upsample every frame to 4096^2, or allocate 30 million classes
per sample. Every value used is checked here, before anything is built on it: numbers of the right
type, finite, within the bounds below; an error names the file, the field, the value and the fix.
A field is read only where it is needed (the loader says which: see loader.wanted_facts):
num_classes by fine-tuning (evaluation takes it from the model), label_counts by balanced
sampling, frame_size when image_size is not given, and none that an explicit option replaces.
"""
from __future__ import annotations

import math
import os

from .files import MetadataError, read_json_object
from .format import DATASET_JSON, MAX_FRAMES

MAX_DATASET_JSON_BYTES = 64 << 20
MAX_NUM_CLASSES = 1 << 16              # AudioSet 527, VGGSound 309, ImageNet-21k 21,841
MAX_FBANK_MEAN = 100.0                 # a Kaldi log-mel fbank's mean is about -5, its std about 4.5
FBANK_STD_RANGE = (0.01, 100.0)
MAX_LABEL_COUNT = 1e12
MAX_DEFAULT_IMAGE_SIZE = 1024          # frame_size taken as the image size when none is given


def read_dataset_json(folder: str) -> dict:
    """The object in FOLDER/dataset.json ({} when there is none); MetadataError naming it."""
    path = os.path.join(folder, DATASET_JSON)
    if not os.path.lexists(path):
        return {}
    try:
        return read_json_object(path, MAX_DATASET_JSON_BYTES)
    except MetadataError as e:
        raise MetadataError(f"{e}; rewrite it with `avsiam shard` (it rewrites dataset.json from "
                            "the committed shards) or remove it") from None


FACTS = ("fbank_mean", "fbank_std", "frame_size", "num_frames", "num_classes", "label_counts")


def read_dataset_facts(folder: str, wanted=FACTS, data: dict | None = None) -> dict:
    """The `wanted` facts that FOLDER/dataset.json holds, each checked: fbank_mean, fbank_std,
    frame_size (as the default image size: at most MAX_DEFAULT_IMAGE_SIZE), num_frames,
    num_classes, label_counts. Fields not wanted are not looked at; MetadataError names the file
    and the field, and the loader option that replaces it."""
    data = read_dataset_json(folder) if data is None else data
    check = _Checker(os.path.join(folder, DATASET_JSON))
    facts = {}
    for name in FACTS:
        value = _raw_fact(check, data, name) if name in wanted else None
        if value is not None:
            facts[name] = check.fact(name, value)
    return facts


def _raw_fact(check: "_Checker", data: dict, name: str):
    """Where each fact sits in dataset.json (the pipeline's layout, then older flat names)."""
    if name in ("fbank_mean", "fbank_std"):
        stats = check.mapping(_first_of(data, "fbank_stats", "stats"), "fbank_stats")
        if stats.get("count") == 0:              # no audio was seen: no statistics
            return None
        return _first(stats.get(name[6:]), data.get(name))
    if name in ("frame_size", "num_frames"):
        params = check.mapping(_first_of(data, "params", "parameters"), "params")
        return _first(params.get(name), data.get(name))
    if name == "num_classes":                     # 0: the split has no label vocabulary
        value = check.mapping(data.get("labels"), "labels").get("num_classes")
        return None if value == 0 and type(value) is int else value
    return data.get(name)


# Where the pipeline writes each fact (shown in errors; the loader option has the fact's name).
FIELDS = {"fbank_mean": "fbank_stats.mean", "fbank_std": "fbank_stats.std",
          "frame_size": "params.frame_size", "num_frames": "params.num_frames",
          "num_classes": "labels.num_classes", "label_counts": "label_counts"}


class _Checker:
    """Type and range checks whose errors name the file, the field and the loader option."""

    def __init__(self, where: str):
        self.where = where
        self.option: str | None = None

    def fact(self, name: str, value):
        self.option = name
        if name == "fbank_mean":
            return self.number(value, FIELDS[name], -MAX_FBANK_MEAN, MAX_FBANK_MEAN)
        if name == "fbank_std":
            return self.number(value, FIELDS[name], *FBANK_STD_RANGE)
        if name == "frame_size":
            return self.integer(value, FIELDS[name], 1, MAX_DEFAULT_IMAGE_SIZE,
                                " (larger frames are handed over only when image_size says so)")
        if name == "num_frames":
            return self.integer(value, FIELDS[name], 1, MAX_FRAMES)
        if name == "num_classes":
            return self.integer(value, FIELDS[name], 1, MAX_NUM_CLASSES)
        return self.label_counts(value)

    def fail(self, field: str, value, expected: str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        option = {"frame_size": "image_size"}.get(self.option, self.option)
        override = f", or set the loader option {option} (data.options.{option}=... in a run config)" \
            if option else ""
        raise MetadataError(f"{self.where}: {field} is {shown}, expected {expected}; fix or "
                            f"remove the field{override}")

    def mapping(self, value, field: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field, value, "an object")
        return value

    def number(self, value, field: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not low <= value <= high:
            self.fail(field, value, f"a finite number in [{low:g}, {high:g}]")
        return float(value)

    def integer(self, value, field: str, low: int, high: int, why: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(field, value, f"an integer in [{low}, {high}]{why}")
        return value

    def label_counts(self, value) -> list[float] | dict[int, float]:
        """A list of counts, or {index: count}; counts finite and >= 0, indices < MAX_NUM_CLASSES."""
        if isinstance(value, list):
            if len(value) > MAX_NUM_CLASSES:
                self.fail("label_counts", f"<{len(value)} counts>", f"at most {MAX_NUM_CLASSES}")
            return [self.number(c, f"label_counts[{i}]", 0, MAX_LABEL_COUNT)
                    for i, c in enumerate(value)]
        if not isinstance(value, dict) or len(value) > MAX_NUM_CLASSES:
            self.fail("label_counts", value, "a list of counts or an {index: count} object")
        out = {}
        for index, count in value.items():
            if not (isinstance(index, str) and index.isdigit() and int(index) < MAX_NUM_CLASSES):
                self.fail("label_counts", index, f"indices 0..{MAX_NUM_CLASSES - 1}")
            out[int(index)] = self.number(count, f"label_counts[{index}]", 0, MAX_LABEL_COUNT)
        return out


def _first_of(data: dict, *names: str):
    return _first(*(data.get(name) for name in names))


def _first(*values):
    return next((v for v in values if v is not None), None)
