"""What each mode hands out: shapes, normalisation order, frames, labels and augmentations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shards.format import DEFAULT_FBANK_MEAN, DEFAULT_FBANK_STD
from shards.loader import make_loader
from shards.transforms import IMAGENET_MEAN, IMAGENET_STD
from test_loader_shards import fbank_for, labels_for, write_split

torch.set_num_threads(1)
FRAMES = 5      # stored frames per clip; frame f{i} is a flat grey 10 * i


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modes")
    write_split(folder, [4, 4, 4, 4], num_frames=FRAMES)       # dataset.json: mean -5, std 4
    return folder


@pytest.fixture(scope="module")
def plain_split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    write_split(folder, [4, 4], num_frames=FRAMES, dataset_json=False)
    return folder


def first_batch(folder, **options) -> dict:
    options.setdefault("batch_size", 4)
    it = iter(make_loader(str(folder), **options))
    batch = next(it)
    it.close()
    return batch


def identity(key: str) -> tuple[int, int]:
    return int(key[4:7]), int(key[8:12])          # clipSSSxIIII_...


def frame_index(visual: torch.Tensor) -> int:
    """Which stored frame a normalised [3, S, S] frame is (from its centre grey level)."""
    s = visual.shape[-1]
    grey = visual[0, s // 2, s // 2].item() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return round(grey * 255 / 10)


def test_pretrain_defaults_pad_then_normalise_with_dataset_stats(split):
    batch = first_batch(split, mode="pretrain", normalization="dataset")
    assert batch["audio"].shape == (4, 1024, 128) and batch["audio"].dtype == torch.float32
    assert batch["visual"].shape == (4, 3, 32, 32)
    assert len(batch["keys"]) == 4 and len(batch["labels"]) == 4
    for i, key in enumerate(batch["keys"]):
        raw = torch.from_numpy(fbank_for(*identity(key), 998).astype(np.float32))
        assert torch.allclose(batch["audio"][i, :998], (raw + 5.0) / 4.0)
        assert torch.allclose(batch["audio"][i, 998:], torch.full((26, 128), 5.0 / 4.0))
        assert batch["labels"][i] == labels_for(*identity(key), 5)


def test_cav_mae_defaults_without_dataset_json_and_norm_then_pad(plain_split):
    batch = first_batch(plain_split, mode="pretrain")
    assert torch.allclose(batch["audio"][:, 1000], torch.tensor(-DEFAULT_FBANK_MEAN / DEFAULT_FBANK_STD))
    batch = first_batch(plain_split, mode="pretrain", norm_order="norm_then_pad",
                        fbank_mean=-4.0, fbank_std=2.0)
    assert torch.count_nonzero(batch["audio"][:, 998:]) == 0
    key = batch["keys"][0]
    raw = torch.from_numpy(fbank_for(*identity(key), 998).astype(np.float32))
    assert torch.allclose(batch["audio"][0, :998], (raw + 4.0) / 2.0)


def test_pretrain_picks_random_frames_and_resizes(split):
    batch = first_batch(split, mode="pretrain", batch_size=16, audio_frames=64, image_size=16)
    assert batch["visual"].shape == (16, 3, 16, 16)
    picked = [frame_index(v) for v in batch["visual"]]
    assert set(picked) <= set(range(FRAMES)) and len(set(picked)) > 1


def test_eval_is_deterministic_middle_or_all_frames(split):
    a = first_batch(split, mode="eval", audio_frames=64)
    b = first_batch(split, mode="eval", audio_frames=64)
    assert a["keys"] == b["keys"] and torch.equal(a["audio"], b["audio"])
    assert [frame_index(v) for v in a["visual"]] == [FRAMES // 2] * 4
    every = first_batch(split, mode="eval", audio_frames=64, frames="all")
    assert every["visual"].shape == (4, FRAMES, 3, 32, 32)
    assert [frame_index(v) for v in every["visual"][0]] == list(range(FRAMES))


def test_eval_covers_each_sample_once_with_equal_batches_per_rank(tmp_path):
    write_split(tmp_path, [5, 1, 2, 3, 4], num_frames=2)
    seen, counts = [], []
    for rank in range(2):
        loader = make_loader(str(tmp_path), mode="eval", batch_size=2, rank=rank, world_size=2,
                             num_workers=0, lanes=2, audio_frames=32)
        batches = list(loader)
        counts.append(len(batches))
        for b in batches:
            seen += [k for k, ok in zip(b["keys"], b["valid"]) if ok]
            assert torch.count_nonzero(b["audio"][~b["valid"]]) == 0
            assert torch.count_nonzero(b["visual"][~b["valid"]]) == 0
    assert counts[0] == counts[1] == len(loader)
    assert len(seen) < sum(counts) * 2                  # some rows were padding
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 15


def test_finetune_labels_multi_hot_smoothed_or_index(split):
    batch = first_batch(split, mode="finetune", audio_frames=64, num_classes=5, mixup=0.0,
                        label_smoothing=0.1)
    for key, target in zip(batch["keys"], batch["labels"]):
        expected = torch.full((5,), 0.1 / 5)
        expected[labels_for(*identity(key), 5)] = 0.9
        assert torch.allclose(target, expected)
    batch = first_batch(split, mode="finetune", audio_frames=64, num_classes=5, mixup=0.0,
                        label_smoothing=0.0, label_type="index")
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [labels_for(*identity(k), 5)[0] for k in batch["keys"]]
    with pytest.raises(ValueError, match="multi_hot"):
        make_loader(str(split), mode="finetune", batch_size=4, num_classes=5, label_type="index")


def test_specaugment_masks_bands_and_spans_before_normalising(split):
    opts = dict(mode="finetune", batch_size=8, audio_frames=256, num_classes=5, mixup=0.0,
                noise=False, roll=False, normalization="dataset")
    masked = first_batch(split, freqm=48, timem=192, **opts)["audio"]
    plain = first_batch(split, freqm=0, timem=0, **opts)["audio"]
    mask_value = torch.tensor(5.0 / 4.0)            # raw 0 -> (0 + 5) / 4
    bands = [(masked[i] == mask_value).all(dim=0).sum().item() for i in range(8)]
    spans = [(masked[i] == mask_value).all(dim=1).sum().item() for i in range(8)]
    assert max(bands) > 0 and max(spans) > 0 and max(bands) < 48 and max(spans) < 192
    changed = masked != plain
    assert torch.equal(masked[changed], torch.full_like(masked[changed], 5.0 / 4.0))


def test_mixup_mixes_power_spectra_frames_and_labels(split):
    opts = dict(mode="finetune", batch_size=4, audio_frames=64, num_classes=5, noise=False,
                roll=False, freqm=0, timem=0, label_smoothing=0.0, frames=0, normalization="dataset")
    mixed = first_batch(split, mixup=1.0, **opts)
    plain = first_batch(split, mixup=0.0, **opts)
    assert mixed["keys"] == plain["keys"]
    lam, partner = mixed["mix_lambda"], mixed["mix_partner"]
    assert ((lam > 0.1) & (lam < 0.9)).all() and (partner != torch.arange(4)).all()
    raw = plain["audio"] * 4.0 - 5.0                # undo the normalisation
    for i in range(4):
        j, l = int(partner[i]), float(lam[i])
        power = torch.logaddexp(raw[i] + math.log(l), raw[j] + math.log(1 - l))
        assert torch.allclose(mixed["audio"][i], (power + 5.0) / 4.0, atol=1e-4)
        assert torch.allclose(mixed["labels"][i], l * plain["labels"][i] + (1 - l) * plain["labels"][j])
        assert torch.allclose(mixed["visual"][i], l * plain["visual"][i] + (1 - l) * plain["visual"][j],
                              atol=1e-5)


def test_noise_and_roll(split):
    opts = dict(mode="pretrain", batch_size=4, audio_frames=64, seed=3)
    plain = first_batch(split, **opts)["audio"]
    noisy = first_batch(split, noise=True, **opts)["audio"]
    delta = noisy - plain
    assert (delta >= 0).all() and (delta < 0.1).all() and delta.abs().sum() > 0
    rolled = first_batch(split, roll=True, **opts)["audio"]
    for i in range(4):
        assert any(torch.equal(torch.roll(plain[i], s, 0), rolled[i]) for s in range(64))


def test_random_frames_are_uniform_and_only_the_kept_one_is_buffered(tmp_path):
    write_split(tmp_path, [50] * 4, num_frames=FRAMES, frame_size=16, fbank_frames=20)
    loader = make_loader(str(tmp_path), mode="pretrain", batch_size=50, audio_frames=16,
                         shuffle_buffer=20)
    picked = [frame_index(v) for b in loader for v in b["visual"]]
    counts = np.bincount(picked, minlength=FRAMES)
    assert len(picked) == 200 and counts.min() > 20            # uniform: 40 expected each
    from shards.reader import MemberFilter, read_shard
    from shards.sources import ShardRef

    members = MemberFilter(("random", np.random.default_rng(0)))
    raw = list(read_shard(ShardRef(str(tmp_path / "train-000000.tar"), 50), members))
    assert all(sum(k.endswith(".jpg") for k in s) == 1 and s["__video__"] for s in raw)


def test_output_dtype_hands_over_half_the_bytes(split):
    full = first_batch(split, mode="pretrain", audio_frames=64, seed=4)
    half = first_batch(split, mode="pretrain", audio_frames=64, seed=4, output_dtype="bfloat16")
    assert half["audio"].dtype == half["visual"].dtype == torch.bfloat16
    assert torch.allclose(half["audio"].float(), full["audio"], atol=0.02, rtol=0.01)
    assert torch.allclose(half["visual"].float(), full["visual"], atol=0.02, rtol=0.01)


@pytest.mark.parametrize("workers", [0, 1])
def test_raw_frames_hand_over_uint8_that_normalise_to_the_float_batch(split, workers):
    from shards.transforms import model_input

    options = dict(mode="pretrain", audio_frames=64, seed=4, num_workers=workers)
    full = first_batch(split, **options)
    raw = first_batch(split, raw_frames=True, output_dtype="bfloat16", **options)
    assert raw["keys"] == full["keys"]
    assert raw["visual"].dtype == torch.uint8 and raw["visual"].shape == full["visual"].shape
    assert raw["audio"].dtype == torch.bfloat16
    assert torch.equal(model_input(raw["visual"], "cpu", torch.float32), full["visual"])
    assert model_input(raw["visual"], "cpu", torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(model_input(full["audio"], "cpu", torch.float32), full["audio"])


def test_raw_frames_refuse_mixup(split):
    with pytest.raises(ValueError, match="raw_frames.*mixup=0"):
        make_loader(str(split), mode="finetune", batch_size=4, num_classes=3, raw_frames=True)


@pytest.mark.parametrize("options", [dict(), dict(output_dtype="bfloat16"),
                                     dict(raw_frames=True, output_dtype="float16")])
def test_worker_batches_come_through_the_ring_and_stay_valid_when_kept(split, options):
    """20 batches from 2 workers (3 recycled ring slots each) kept until the end equal the batches
    made in-process: a slot is reused only after its batch was copied out."""
    common = dict(mode="pretrain", batch_size=2, audio_frames=32, seed=7, lanes=2,
                  resampled=True, samples_per_epoch=40, **options)
    kept = list(make_loader(str(split), num_workers=2, **common))
    alone = list(make_loader(str(split), num_workers=0, **common))
    assert len(kept) == len(alone) == 20
    for a, b in zip(kept, alone):
        assert a["keys"] == b["keys"]
        for name in ("audio", "visual"):
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name])
            assert not a[name].is_shared()          # copied out of the ring, owned by the caller


def test_a_ring_larger_than_free_shared_memory_is_refused_with_the_fix(tmp_path):
    import os

    from shards.handover import HandoverRing, check_shared_memory

    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    with pytest.raises(RuntimeError, match="shm-size.*num_workers"):
        check_shared_memory(free + (1 << 30), 2, 3, where=str(tmp_path))
    check_shared_memory(1 << 20, 2, 3, where=str(tmp_path))           # fits: no error
    if os.path.isdir("/dev/shm"):
        huge = {"audio": ((1 << 20, 1 << 20, 128), torch.float32)}      # 512 TiB: never allocated
        with pytest.raises(RuntimeError, match="shared memory"):
            HandoverRing(huge, workers=1, slots=3)


def test_require_labels_skips_and_counts_unlabelled_samples(tmp_path):
    write_split(tmp_path, [4, 4], num_frames=2,
                label_fn=lambda shard, index, classes: [] if index == 1 else [index % 3])
    options = dict(mode="finetune", batch_size=4, num_classes=3, label_type="index", mixup=0.0,
                   label_smoothing=0.0, audio_frames=32, seed=1)
    loader = make_loader(str(tmp_path), require_labels=True, **options)
    batches = list(loader)
    assert loader.skipped_by_reason == {"no_label": 2}
    assert all((b["labels"] >= 0).all() for b in batches)          # every row has a target
    plain = list(make_loader(str(tmp_path), **options))
    assert sum(int((b["labels"] < 0).sum()) for b in plain) == 2   # without it: index -1 rows
