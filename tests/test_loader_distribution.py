"""Distribution: equal batches on every rank, shard splits, resampling, mixing, balanced sampling."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from shards.balance import label_weights, sample_weights
from shards.loader import make_loader
from test_loader_shards import write_split

torch.set_num_threads(1)
SMALL = dict(audio_frames=16, image_size=8)


def keys_of(loader) -> list[list[str]]:
    return [b["keys"] for b in loader]


@pytest.mark.multiproc
def test_every_rank_yields_the_same_batches_whatever_the_shard_sizes(tmp_path):
    write_split(tmp_path, [40, 1, 1, 2, 30, 1, 3, 1, 1], fbank_frames=20, frame_size=8)   # 80
    for drop_last, expected in ((True, 80 // 12), (False, -(-80 // 12))):
        counts = []
        for rank, workers in ((0, 0), (1, 2), (2, 1)):
            loader = make_loader(str(tmp_path), batch_size=4, rank=rank, world_size=3,
                                 num_workers=workers, lanes=2, drop_last=drop_last, **SMALL)
            batches = keys_of(loader)
            assert all(len(k) == 4 for k in batches)
            counts.append(len(batches))
        assert counts == [expected] * 3


def test_shard_order_is_shared_and_split_by_rank(tmp_path):
    write_split(tmp_path, [4] * 6, fbank_frames=20, frame_size=8)
    per_rank = []
    for rank in range(3):
        loader = make_loader(str(tmp_path), batch_size=4, rank=rank, world_size=3, seed=5,
                             shuffle_buffer=0, **SMALL)
        per_rank.append([k for b in keys_of(loader) for k in b])
    everything = [k for keys in per_rank for k in keys]
    assert len(everything) == 24 and len(set(everything)) == 24      # one pass, nothing twice
    for keys in per_rank:       # whole shards, in shard order within each shard
        shards = [k[:7] for k in keys]
        assert shards == sorted(shards, key=shards.index) and len(set(shards)) == 2
    again = make_loader(str(tmp_path), batch_size=4, rank=0, world_size=3, seed=5, shuffle_buffer=0,
                        **SMALL)
    again.set_epoch(1)
    assert [k for b in keys_of(again) for k in b] != per_rank[0]


def test_too_few_shards_is_a_clear_error(tmp_path):
    write_split(tmp_path, [8, 8, 8], fbank_frames=20, frame_size=8)
    with pytest.raises(ValueError, match=r"3 shards cannot feed .* 2 x 2 = 4"):
        make_loader(str(tmp_path), batch_size=2, world_size=2, num_workers=2, **SMALL)
    loader = make_loader(str(tmp_path), batch_size=2, world_size=2, num_workers=2, resampled=True,
                         **SMALL)
    assert len(loader) == 6


def test_resampled_draws_shards_with_replacement(tmp_path):
    write_split(tmp_path, [3, 3], fbank_frames=20, frame_size=8)
    loader = make_loader(str(tmp_path), batch_size=4, resampled=True, samples_per_epoch=40,
                         shuffle_buffer=0, **SMALL)
    keys = [k for b in keys_of(loader) for k in b]
    assert len(keys) == 40 and len(set(keys)) == 6      # 6 samples, drawn again and again


def test_mixing_follows_the_weights(tmp_path):
    write_split(tmp_path / "a", [6, 6], fbank_frames=20, frame_size=8)
    write_split(tmp_path / "b", [6, 6], fbank_frames=20, frame_size=8, first_index=50)
    loader = make_loader([(str(tmp_path / "a"), 3.0), (str(tmp_path / "b"), 1.0)], batch_size=8,
                         samples_per_epoch=800, shuffle_buffer=10, **SMALL)
    sources = torch.cat([b["source"] for b in loader])
    assert len(sources) == 800
    share = (sources == 0).float().mean().item()
    assert 0.70 < share < 0.80                      # 3 : 1 -> 0.75
    with pytest.raises(ValueError, match="resampling"):
        make_loader([(str(tmp_path / "a"), 1.0), (str(tmp_path / "b"), 1.0)], batch_size=8,
                    resampled=False, samples_per_epoch=80)


def skewed_labels(shard: int, index: int, num_classes: int) -> list[int]:
    """Class 0 is common, class 5 rare; some clips have two labels."""
    rank = (shard * 13 + index) % 20
    label = 0 if rank < 10 else 1 if rank < 14 else 2 if rank < 17 else 3 if rank < 19 else 5
    return [label, 4] if index % 7 == 0 else [label]


def test_balanced_sampling_matches_the_exact_weighted_sampler(tmp_path):
    num_classes = 6
    sizes = [20] * 6
    write_split(tmp_path, sizes, fbank_frames=20, frame_size=8, label_fn=skewed_labels,
                num_classes=num_classes)
    labels = [skewed_labels(s, i, num_classes) for s, n in enumerate(sizes) for i in range(n)]
    counts = np.zeros(num_classes)
    for ls in labels:
        counts[ls] += 1
    multi_hot = np.zeros((len(labels), num_classes))
    for i, ls in enumerate(labels):
        multi_hot[i, ls] = 1

    # exact: torch's WeightedRandomSampler over CAV-MAE weights, as CAV-MAE does
    weights = sample_weights(labels, label_weights(counts))
    drawn = list(torch.utils.data.WeightedRandomSampler(
        torch.tensor(weights), num_samples=20 * len(labels), replacement=True,
        generator=torch.Generator().manual_seed(0)))
    exact = multi_hot[drawn].sum(0) / len(drawn)

    loader = make_loader(str(tmp_path), mode="finetune", batch_size=8, num_classes=num_classes,
                         balanced=True, mixup=0.0, label_smoothing=0.0, seed=1, shuffle_buffer=40,
                         noise=False, roll=False, freqm=0, timem=0, **SMALL)
    streamed = []
    for epoch in range(20):
        loader.set_epoch(epoch)
        streamed += [b["labels"] for b in loader]
    stream = torch.cat(streamed).numpy().sum(0) / (len(streamed) * 8)
    natural = multi_hot.mean(0)
    assert np.abs(stream - exact).sum() < 0.06               # close to the exact sampler ...
    assert np.abs(natural - exact).sum() > 0.5               # ... which is far from no balancing
    assert stream[5] > 3 * natural[5]                        # the rare class is drawn far more
