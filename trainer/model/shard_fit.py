"""Do the shards fit the model? Normalisation, label vocabulary and input sizes, before evaluating.

- normalisation: the model file's (the one used in training) unless an option names one;
- labels: when the model and the shards both know their label ids, the shards' class indices are
  mapped onto the model's by id (identical vocabularies map to themselves); a shard label the model
  does not know, or vocabularies of different sizes when ids are unknown, is refused;
- sizes: a warning when frames or clips are resized to what the model takes.
"""
from __future__ import annotations

import logging

log = logging.getLogger("trainer.model")

# A clip whose fbank length differs from the model's audio frames by more than this is called resized.
AUDIO_LENGTH_TOLERANCE = 0.1


class VocabularyError(ValueError):
    """Eval shards labelled with a vocabulary the model was not trained on."""


def normalization_options(facts, options: dict) -> dict:
    """fbank_mean/fbank_std of the model's training unless `options` set either one or ask for
    the shards' own statistics (normalization=dataset)."""
    norm = getattr(facts, "normalization", None)
    if norm is None or "fbank_mean" in options or "fbank_std" in options \
            or options.get("normalization") == "dataset":
        return {}
    return {"fbank_mean": norm["mean"], "fbank_std": norm["std"]}


def label_mapping(model_ids: list[str] | None, shard_ids: list[str] | None, model_classes: int,
                  shard_classes: int | None, where: str) -> list[int] | None:
    """Model class index of every shard class index, or None when they are the same."""
    if model_ids is not None and shard_ids is not None:
        if model_ids == shard_ids:
            return None
        index = {label: i for i, label in enumerate(model_ids)}
        unknown = [label for label in shard_ids if label not in index]
        if unknown:
            raise VocabularyError(
                f"{where} is labelled with {len(unknown)} label id(s) the model was not trained on "
                f"(e.g. {', '.join(unknown[:3])}); evaluate shards made with the model's labels file "
                f"(`avsiam shard --labels`) or fine-tune on this vocabulary first")
        log.warning("%s orders its %d labels differently from the model's %d: mapped by label id",
                    where, len(shard_ids), len(model_ids))
        return [index[label] for label in shard_ids]
    if shard_classes is not None and shard_classes != model_classes:
        raise VocabularyError(f"{where} has {shard_classes} classes, the model {model_classes}; evaluate "
                              "shards of the model's label vocabulary (`avsiam shard --labels`)")
    return None


def size_warnings(model_config, dataset: dict, where: str) -> list[str]:
    """Lines saying how the shards' frames and clips are resized to the model's inputs."""
    lines = []
    params = dataset.get("params") if isinstance(dataset.get("params"), dict) else {}
    frame = params.get("frame_size")
    if isinstance(frame, int) and frame != model_config.image_size:
        lines.append(f"{where} holds {frame}-px frames; the model takes {model_config.image_size} px: "
                     "frames are resized")
    stats = dataset.get("fbank_stats") if isinstance(dataset.get("fbank_stats"), dict) else {}
    counts = dataset.get("counts") if isinstance(dataset.get("counts"), dict) else {}
    values, clips = stats.get("count"), counts.get("with_audio")
    bins = model_config.mel_bins
    if isinstance(values, int) and isinstance(clips, int) and clips > 0 and values > 0:
        frames = values / bins / clips
        if abs(frames - model_config.audio_frames) > AUDIO_LENGTH_TOLERANCE * model_config.audio_frames:
            action = "cropped" if frames > model_config.audio_frames else "padded"
            lines.append(f"{where} clips hold about {frames:.0f} fbank frames; the model takes "
                         f"{model_config.audio_frames}: audio is {action}")
    return lines


def read_shards_dataset(model_config, shards, allow_pipe: bool = False) -> tuple[dict, str]:
    """The shards' dataset.json ({} when there is none) and how to name it, after warning (rank 0)
    how their frames and clips are resized to the model's inputs."""
    import os

    from shards.dataset_facts import read_dataset_json
    from shards.sources import expand_urls

    _, root = expand_urls(shards, allow_pipe=allow_pipe)
    dataset = read_dataset_json(root) if root is not None else {}
    where = f"{root}/dataset.json" if root is not None else str(shards)
    if os.environ.get("RANK", "0") == "0":
        for line in size_warnings(model_config, dataset, where):
            log.warning(line)
    return dataset, where


class MappedLabels:
    """A loader whose multi-hot labels over the shards' classes become the model's classes."""

    def __init__(self, loader, mapping: list[int], num_classes: int) -> None:
        self.loader, self.mapping, self.num_classes = loader, mapping, num_classes

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        import torch

        columns = torch.tensor(self.mapping)
        for batch in self.loader:
            labels = batch["labels"]
            out = torch.zeros((labels.shape[0], self.num_classes), dtype=labels.dtype)
            out[:, columns] = labels
            yield {**batch, "labels": out}
