"""`make_loader`: the streaming loader of AVSiam shards, with exact resume.

    from shards.loader import make_loader
    loader = make_loader(urls, mode="pretrain", batch_size=B, rank=r, world_size=W,
                         num_workers=N, seed=S, **options)        # options: shards.config.LoaderConfig
    for batch in loader:        # one epoch of len(loader) batches, the same count on every rank
        batch["audio"]          # float32 [B, audio_frames, 128], normalised
        batch["visual"]         # float32 [B, 3, S, S] ([B, N, 3, S, S] with frames="all")
        batch["labels"]         # multi-hot [B, C] / index [B] (num_classes set) or lists of indices
        batch["keys"]           # sample keys; also "valid" [B] (False: stand-in row), "source" [B],
                                # "audio_valid" [B] (real fbank rows), "skipped" {reason: n}
    state = loader.state_dict()                     # a few integers; equal on every rank
    loader = make_loader(...same arguments...); loader.load_state_dict(state)   # continues exactly

How the pieces fit: a rank's stream is split into `lanes` independent lanes (shards/stream.py);
batch j of the epoch is lane j % lanes's batch j // lanes. DataLoader workers each serve whole lanes
and DataLoader interleaves them in order, so the stream depends on (urls, seed, epoch, rank,
world_size, lanes, batch_size, options) but not on num_workers. Iterating is a cursor: breaking out of
a loop and iterating again continues where it stopped; after the last batch of an epoch the next
iteration starts the next epoch. Resume rebuilds each lane and skips its consumed batches' raw samples
without decoding them.

Epoch length: usable samples (the shards' records, or samples_per_epoch) // (batch_size x world_size)
batches per rank (ceil with drop_last=False); lanes that run out wrap into more shards, so uneven
shards never make ranks disagree. Eval reads each sample once; every lane is padded with invalid rows
to the same batch count. Memory bounds: lanes x shuffle_buffer_bytes of raw bytes, plus
num_workers x prefetch_factor batches in flight.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .balance import (label_weights, manifest_label_counts, mean_sample_weight, normalise_counts,
                      scan_label_counts)
from .config import LoaderConfig
from .format import DEFAULT_FBANK_MEAN, DEFAULT_FBANK_STD, DEFAULT_FRAME_SIZE, DEFAULT_NUM_FRAMES
from .handover import SLOT_KEY, HandoverRing, batch_layout
from .shardlists import check_enough_shards, eval_shards
from .sources import DatasetSource, resolve_sources
from .state import LoaderState
from .stream import StreamSpec, build_lane, lane_batch_count_before, run_stages


def make_loader(urls, mode: str = "pretrain", *, batch_size: int, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, seed: int = 0, **options) -> "StreamingLoader":
    """Build the loader of one rank (see the module doc; options: LoaderConfig fields)."""
    cfg = LoaderConfig(mode=mode, batch_size=batch_size, rank=rank, world_size=world_size,
                       num_workers=num_workers, seed=seed, **options)
    datasets = resolve_sources(urls, allow_pipe=cfg.allow_pipe, wanted=wanted_facts(cfg))
    facts = datasets[0].facts or {}
    if "num_classes" in facts:
        cfg = dataclasses.replace(cfg, num_classes=facts["num_classes"])
    norm = tuple(_norm_of(cfg, ds) for ds in datasets)
    cfg = cfg.resolved(fbank_mean=norm[0][0], fbank_std=norm[0][1],
                       image_size=int(facts.get("frame_size", DEFAULT_FRAME_SIZE)),
                       num_frames=int(facts.get("num_frames", DEFAULT_NUM_FRAMES)))
    _check_datasets(cfg, datasets)
    if cfg.mode == "eval":
        lane_batches = _eval_lane_batches(cfg, datasets[0])
        spec = StreamSpec(cfg=cfg, datasets=tuple(datasets), norm=norm,
                          epoch_batches=lane_batches * cfg.lanes, lane_batches=lane_batches)
    else:
        spec = StreamSpec(cfg=cfg, datasets=tuple(datasets), norm=norm,
                          epoch_batches=_train_epoch_batches(cfg, datasets),
                          balance=_balance(cfg, datasets) if cfg.balanced else None)
    return StreamingLoader(spec)


def wanted_facts(cfg: LoaderConfig) -> set[str]:
    """The dataset.json facts this loader uses: those no option gives, and num_classes and
    label_counts only where the mode needs them (fine-tuning; balanced sampling)."""
    wanted = {name for name in ("fbank_mean", "fbank_std", "num_frames")
              if getattr(cfg, name) is None}
    if cfg.normalization == "paper":
        wanted -= {"fbank_mean", "fbank_std"}
    if cfg.image_size is None:
        wanted.add("frame_size")
    if cfg.mode == "finetune" and cfg.num_classes is None:
        wanted.add("num_classes")
    if cfg.balanced and cfg.label_counts is None:
        wanted.add("label_counts")
    return wanted


def _check_datasets(cfg: LoaderConfig, datasets: list[DatasetSource]) -> None:
    mixing = len(datasets) > 1
    if mixing and cfg.mode == "eval":
        raise ValueError("eval reads one dataset; evaluate each dataset with its own loader")
    if mixing and cfg.resampled is False:
        raise ValueError("mixing datasets with weights needs resampling: leave resampled unset or True")
    if mixing and cfg.balanced:
        raise ValueError("balanced sampling works on one dataset; do not combine it with mixing")
    if cfg.mode != "eval" and not (cfg.resampled or mixing):
        check_enough_shards(datasets[0], cfg.world_size, cfg.lanes)


def _norm_of(cfg: LoaderConfig, ds: DatasetSource) -> tuple[float, float]:
    """fbank (mean, std): explicit options win; else the paper's constants, or with
    normalization=dataset the dataset's dataset.json (else the constants)."""
    facts = (ds.facts or {}) if cfg.normalization == "dataset" else {}
    mean = cfg.fbank_mean if cfg.fbank_mean is not None else facts.get("fbank_mean", DEFAULT_FBANK_MEAN)
    std = cfg.fbank_std if cfg.fbank_std is not None else facts.get("fbank_std", DEFAULT_FBANK_STD)
    return float(mean), float(std)


def normalization_source(mean: float, std: float, facts: dict | None) -> str:
    """Which choice (mean, std) came from: paper (the constants), dataset (the dataset.json
    statistics) or given (fbank_mean/fbank_std options)."""
    if (mean, std) == (DEFAULT_FBANK_MEAN, DEFAULT_FBANK_STD):
        return "paper"
    if facts and (facts.get("fbank_mean"), facts.get("fbank_std")) == (mean, std):
        return "dataset"
    return "given"


def _train_epoch_batches(cfg: LoaderConfig, datasets: list[DatasetSource]) -> int:
    total = cfg.samples_per_epoch
    if total is None:
        unknown = [s.url for ds in datasets for s in ds.shards if s.samples is None]
        if unknown:
            raise ValueError(f"the number of samples per epoch is unknown: {_some(unknown)} "
                             "no .parquet record (pipe: URLs never do); set the loader option "
                             "samples_per_epoch (data.options.samples_per_epoch=N in a run config) "
                             "or write the shards with `avsiam shard`")
        total = sum(ds.samples for ds in datasets)
    per_step = cfg.batch_size * cfg.world_size
    batches = total // per_step if cfg.drop_last else math.ceil(total / per_step)
    if batches < 1:
        raise ValueError(f"{total} samples make no batch of batch_size x world_size = {per_step}")
    return batches


def _eval_lane_batches(cfg: LoaderConfig, ds: DatasetSource) -> int:
    """Batches every lane of every rank yields: the most any lane needs."""
    most = 0
    for rank in range(cfg.world_size):
        for lane in range(cfg.lanes):
            shards = eval_shards(ds, rank=rank, world_size=cfg.world_size, lane=lane, lanes=cfg.lanes)
            unknown = [s.url for s in shards if s.samples is None]
            if unknown:
                raise ValueError("eval pads every rank to the same batch count from the shards' "
                                 f".parquet records, and {_some(unknown)} none; evaluate local, "
                                 "committed shards")
            most = max(most, math.ceil(sum(s.samples for s in shards) / cfg.batch_size))
    if most == 0:
        raise ValueError("the eval shards hold no sample with audio and frames")
    return most


def _some(urls: list[str]) -> str:
    """`a.tar has` / `a.tar (and 3 more) have`, for messages."""
    return f"{urls[0]} has" if len(urls) == 1 else f"{urls[0]} (and {len(urls) - 1} more) have"


def _balance(cfg: LoaderConfig, datasets: list[DatasetSource]):
    ds = datasets[0]
    raw = cfg.label_counts if cfg.label_counts is not None else (ds.facts or {}).get("label_counts")
    if raw is not None:
        counts, total = normalise_counts(raw, cfg.num_classes), ds.samples
        if total is None:
            total = cfg.samples_per_epoch
        if total is None:
            raise ValueError("balanced sampling needs the dataset size: set the loader option "
                             "samples_per_epoch (data.options.samples_per_epoch=N in a run config)")
    else:
        found = manifest_label_counts(ds.root, ds.shards, cfg.num_classes) if ds.root else None
        counts, total = found if found is not None else scan_label_counts(ds.shards, cfg.num_classes)
    return label_weights(counts), mean_sample_weight(counts, total)


class RankStream(IterableDataset):
    """The rank's batches [start, end) of an epoch; worker w serves the lanes of its batches."""

    def __init__(self, spec: StreamSpec, epoch: int, start: int, end: int,
                 ring: HandoverRing | None = None):
        super().__init__()
        self.spec, self.epoch, self.start, self.end, self.ring = spec, epoch, start, end, ring

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        lanes = self.spec.cfg.lanes
        handover = (self.ring, worker) if self.ring is not None and info is not None else None
        streams = {}
        try:
            for j in range(self.start + worker, self.end, workers):
                lane = j % lanes
                if lane not in streams:
                    skip = lane_batch_count_before(self.start, lane, lanes)
                    streams[lane] = run_stages(build_lane(self.spec, self.epoch, lane, skip,
                                                          handover))
                batch = next(streams[lane], None)
                if batch is None or batch["lane_batch"] != j // lanes:
                    raise RuntimeError(f"lane {lane} did not yield its batch {j // lanes}; this "
                                       "is a bug in shards.stream")
                batch.update(index=j, epoch=self.epoch)
                yield batch
        finally:
            for stream in streams.values():
                close = getattr(stream, "close", None)
                if close is not None:
                    close()


class StreamingLoader:
    """Iterable over one epoch at a time; a resumable cursor (see the module doc)."""

    def __init__(self, spec: StreamSpec):
        cfg = spec.cfg
        self.spec = spec
        self.state = LoaderState(seed=cfg.seed, lanes=cfg.lanes, batch_size=cfg.batch_size,
                                 world_size=cfg.world_size, mode=cfg.mode,
                                 epoch_batches=spec.epoch_batches)

    def __len__(self) -> int:
        return self.spec.epoch_batches

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch at the next iteration (no-op if already inside it)."""
        if epoch != self.state.epoch:
            self.state.epoch, self.state.batches = int(epoch), 0

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far (all workers; carried over by state_dict)."""
        return sum(self.state.skipped.values())

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(self.state.skipped)

    def state_dict(self) -> dict:
        return self.state.to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state.restore(state)

    def __iter__(self):
        cfg, state = self.spec.cfg, self.state
        ring = HandoverRing(batch_layout(cfg), cfg.num_workers, cfg.prefetch_factor + 1) \
            if cfg.num_workers else None
        pin = cfg.pin_memory and torch.cuda.is_available()
        stream = RankStream(self.spec, state.epoch, state.batches, self.spec.epoch_batches, ring)
        loader = DataLoader(stream, batch_size=None, num_workers=cfg.num_workers,
                            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,
                            pin_memory=cfg.pin_memory, in_order=True, persistent_workers=False)
        for batch in loader:
            if SLOT_KEY in batch:
                batch = ring.take(batch, pin)
            if batch["index"] != state.batches or batch["epoch"] != state.epoch:
                raise RuntimeError(f"got batch {batch['epoch']}:{batch['index']} while expecting "
                                   f"{state.epoch}:{state.batches}; this is a bug in shards.loader")
            for reason, count in batch["skipped"].items():
                state.skipped[reason] = state.skipped.get(reason, 0) + count
            del batch["lane_batch"]
            state.advance()
            yield batch
