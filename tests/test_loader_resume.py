"""Exact resume: (batches before a stop) + (batches after load_state_dict) == the uninterrupted stream.

Keys, order and every augmentation draw (the tensors themselves) must match, for 0, 1 and 2
workers, two simulated ranks, stops inside an epoch, at its end and in the next epoch; and the skipped
samples must not be decoded.
"""
from __future__ import annotations

import json

import pytest
import torch

from shards import rows as rows_module
from shards.loader import make_loader
from test_loader_shards import write_split

torch.set_num_threads(1)

BATCH, WORLD = 3, 2
# finetune with every augmentation on, so equal tensors prove equal random draws
OPTIONS = dict(mode="finetune", batch_size=BATCH, world_size=WORLD, seed=7, audio_frames=48,
               num_classes=5, shuffle_buffer=6, noise=True, roll=True, freqm=8, timem=10,
               mixup=0.5, label_smoothing=0.1)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    write_split(folder, [5, 4, 6, 5, 3, 7, 5, 5], fbank_frames=60)   # 40 samples: 6 batches/rank
    return folder


def take(loader, count: int) -> list[dict]:
    """The next `count` batches, crossing epochs as a training loop does."""
    out = []
    while len(out) < count:
        it = iter(loader)
        for batch in it:
            out.append(batch)
            if len(out) == count:
                it.close()
                break
    return out


def signature(batch: dict):
    return (tuple(batch["keys"]), batch["audio"].clone(), batch["visual"].clone(),
            batch["labels"].clone())


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert [tuple(x["keys"]) for x in a] == [tuple(x["keys"]) for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["audio"], y["audio"]) and torch.equal(x["visual"], y["visual"])
        assert torch.equal(x["labels"], y["labels"])


@pytest.fixture(scope="module")
def reference(split):
    """Two uninterrupted epochs of each rank (lanes=2, in the main process)."""
    out = {}
    for rank in range(WORLD):
        loader = make_loader(str(split), rank=rank, num_workers=0, lanes=2, **OPTIONS)
        assert len(loader) == 40 // (BATCH * WORLD)
        out[rank] = take(loader, 2 * len(loader))
    return out


def test_epochs_and_ranks_differ(reference):
    per_epoch = len(reference[0]) // 2
    first = [k for b in reference[0][:per_epoch] for k in b["keys"]]
    second = [k for b in reference[0][per_epoch:] for k in b["keys"]]
    assert first != second                              # reshuffled with seed + epoch
    assert first != [k for b in reference[1][:per_epoch] for k in b["keys"]]


@pytest.mark.multiproc
@pytest.mark.parametrize("workers", [1, 2])
def test_stream_does_not_depend_on_worker_count(split, reference, workers):
    loader = make_loader(str(split), rank=1, num_workers=workers, lanes=2, **OPTIONS)
    assert_same(take(loader, 2 * len(loader)), reference[1])


@pytest.mark.parametrize("workers,rank,stop", [
    (0, 0, 4),      # inside the first epoch
    (0, 1, 6),      # exactly at the epoch boundary
    (1, 0, 9),      # inside the second epoch
    (2, 1, 5),      # last batch of the first epoch still to come
    (2, 0, 8),
])
def test_resume_continues_exactly(split, reference, workers, rank, stop):
    total = len(reference[rank])
    first = make_loader(str(split), rank=rank, num_workers=workers, lanes=2, **OPTIONS)
    before = take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))          # JSON-serialisable, small
    assert set(state) >= {"epoch", "batches", "seed"} and len(json.dumps(state)) < 400
    resumed = make_loader(str(split), rank=rank, num_workers=workers, lanes=2, **OPTIONS)
    resumed.load_state_dict(state)
    after = take(resumed, total - stop)
    assert_same(before + after, reference[rank])


def test_resume_with_another_worker_count_keeps_lanes(split, reference):
    first = make_loader(str(split), rank=0, num_workers=2, lanes=2, **OPTIONS)
    before = take(first, 3)
    resumed = make_loader(str(split), rank=0, num_workers=0, lanes=2, **OPTIONS)
    resumed.load_state_dict(first.state_dict())
    assert_same(before + take(resumed, len(reference[0]) - 3), reference[0])


def test_state_of_another_loader_is_refused(split):
    first = make_loader(str(split), rank=0, num_workers=0, lanes=2, **OPTIONS)
    take(first, 2)
    other = make_loader(str(split), rank=0, num_workers=0, lanes=1, **OPTIONS)
    with pytest.raises(ValueError, match="lanes"):
        other.load_state_dict(first.state_dict())


def test_skipped_batches_are_not_decoded(split, monkeypatch):
    calls = {"fbank": 0, "frame": 0}
    real_fbank, real_frame = rows_module.decode_fbank, rows_module.decode_frame

    def counting_fbank(data):
        calls["fbank"] += 1
        return real_fbank(data)

    def counting_frame(data, size):
        calls["frame"] += 1
        return real_frame(data, size)

    monkeypatch.setattr(rows_module, "decode_fbank", counting_fbank)
    monkeypatch.setattr(rows_module, "decode_frame", counting_frame)
    loader = make_loader(str(split), rank=0, num_workers=0, lanes=1, **OPTIONS)
    loader.load_state_dict(dict(loader.state_dict(), batches=5))
    take(loader, 1)
    assert calls == {"fbank": BATCH, "frame": BATCH}        # only the batch handed out
