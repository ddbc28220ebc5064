"""What a model file says about the data it was trained on, next to its weights.

Exported safetensors (`avsiam export`, `avsiam finetune`'s model.safetensors, `AVSiam.save`) carry
these metadata entries, each a JSON text that parses to a plain value (objects, not JSON strings
inside JSON):

    avsiam_config   {"size": "base", "audio_frames": 1024, ...}      the model config
    normalization   {"mean": -5.081, "std": 4.4849, "source": "paper"}  fbank normalisation in training
                    (source: paper constants | dataset statistics | given values, data.normalization)
    labels          {"ids": ["/m/09x0r", ...], "names": ["Speech", ...]}  the training label vocabulary
    audio_frames    1024                                               fbank frames the model takes
    frame_size      224                                                frame side the model takes

`normalization` and `labels` are absent when unknown (a model built in code, shards without a
dataset.json; an official checkpoint converted by `avsiam convert` has the paper's normalisation and no
labels). Evaluation uses them: the model's normalisation by default, and its
vocabulary to refuse (or map by label id) eval shards labelled with another one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

NORMALIZATION_KEY = "normalization"
NORMALIZATION_SOURCES = ("paper", "dataset", "given")
LABELS_KEY = "labels"


@dataclass(frozen=True)
class ModelFacts:
    """The training facts a model file records (None: unknown)."""

    normalization: dict | None = None   # {"mean": float, "std": float, "source": str (may be absent)}
    labels: dict | None = None          # {"ids": [str], "names": [str]}

    def to_dict(self) -> dict:
        return {NORMALIZATION_KEY: self.normalization, LABELS_KEY: self.labels}

    @classmethod
    def from_dict(cls, data: dict | None) -> "ModelFacts":
        data = data or {}
        return cls(normalization=_normalization(data.get(NORMALIZATION_KEY)),
                   labels=_labels(data.get(LABELS_KEY)))

    @property
    def label_ids(self) -> list[str] | None:
        return list(self.labels["ids"]) if self.labels else None


def metadata_entries(config, facts: ModelFacts | None) -> dict[str, str]:
    """The safetensors metadata of a model with `config` (AVSiamConfig) and `facts`."""
    from .avsiam import CONFIG_METADATA_KEY

    out = {CONFIG_METADATA_KEY: config.to_json(), "format": "avsiam",
           "audio_frames": json.dumps(config.audio_frames), "frame_size": json.dumps(config.image_size)}
    for key, value in (facts or ModelFacts()).to_dict().items():
        if value is not None:
            out[key] = json.dumps(value, sort_keys=True)
    return out


def facts_from_metadata(metadata: dict[str, str]) -> ModelFacts:
    """The facts in a safetensors header (unreadable entries count as unknown)."""
    parsed = {}
    for key in (NORMALIZATION_KEY, LABELS_KEY):
        try:
            parsed[key] = json.loads(metadata[key])
        except (KeyError, TypeError, json.JSONDecodeError):
            parsed[key] = None
    return ModelFacts.from_dict(parsed)


def marker_fields(config, facts: ModelFacts | None) -> dict:
    """What a checkpoint's complete.json records of its model: the config and the facts, as objects."""
    return {"model_config": json.loads(config.to_json()), "model_facts": (facts or ModelFacts()).to_dict()}


def config_text(text_or_object: str | dict) -> str:
    """A model config as complete.json holds it (an object; older runs: a JSON string) -> JSON text."""
    return text_or_object if isinstance(text_or_object, str) else json.dumps(text_or_object, sort_keys=True)


def loader_facts(loader) -> ModelFacts:
    """What a training loader fed the model: its resolved fbank normalisation and the label
    vocabulary of its shards' dataset.json (when every dataset has the same one)."""
    from shards.dataset_facts import read_dataset_json

    from shards.loader import normalization_source

    spec = loader.spec
    norms = set(spec.norm)
    normalization = None
    if len(norms) == 1:
        mean, std = next(iter(norms))
        normalization = {"mean": float(mean), "std": float(std),
                         "source": normalization_source(mean, std, spec.datasets[0].facts)}
    vocabularies = []
    for ds in spec.datasets:
        try:
            labels = _labels(read_dataset_json(ds.root).get("labels")) if ds.root else None
        except ValueError:
            labels = None
        vocabularies.append(labels)
    same = vocabularies and all(v is not None and v["ids"] == vocabularies[0]["ids"] for v in vocabularies)
    return ModelFacts(normalization=normalization, labels=vocabularies[0] if same else None)


def _normalization(value: Any) -> dict | None:
    if not isinstance(value, dict):
        return None
    mean, std = value.get("mean"), value.get("std")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (mean, std)) or std <= 0:
        return None
    out = {"mean": float(mean), "std": float(std)}
    if value.get("source") in NORMALIZATION_SOURCES:
        out["source"] = value["source"]
    return out


def _labels(value: Any) -> dict | None:
    if not isinstance(value, dict):
        return None
    ids, names = value.get("ids"), value.get("names")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return None
    if not isinstance(names, list) or len(names) != len(ids):
        names = list(ids)
    return {"ids": list(ids), "names": [str(n) for n in names]}
