"""Finishing a batch row by row (no transform mixes rows) gives exactly the values of the
whole-batch transforms, for every output dtype."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shards.batches import BatchFinisher, collate
from shards.config import LoaderConfig
from shards.errors import SkipCounter
from shards.shardlists import rng_for

torch.set_num_threads(1)


def make_rows(count: int, size: int) -> list:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        frames = int(rng.integers(20, 90))              # some shorter, some longer than 64
        rows.append({"key": f"k{i}", "source": i % 2, "labels": [i % 3],
                     "fbank": (rng.standard_normal((frames, 128)) * 3 - 5).astype(np.float16),
                     "frames": [torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8))]})
    return rows


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_row_wise_finishing_equals_whole_batch_transforms(dtype):
    cfg = LoaderConfig(mode="finetune", batch_size=6, mixup=0.0, noise=True, roll=True, freqm=8,
                       timem=16, audio_frames=64, output_dtype=dtype,
                       label_smoothing=0.0).resolved(fbank_mean=-5.0, fbank_std=4.0,
                                                     image_size=16, num_frames=1)
    finisher = BatchFinisher(cfg, ((-5.0, 4.0), (-4.0, 3.0)), epoch=0, lane=0,
                             counter=SkipCounter("skip"))
    rows = make_rows(cfg.batch_size, 16)

    def draws():
        return [rng_for(1, 2, p) for p in range(len(rows))]

    row_wise = collate(rows, cfg, None, finisher._row_finisher(draws()))
    cfg32 = LoaderConfig(**{**cfg.__dict__, "output_dtype": "float32"})
    whole = collate(rows, cfg32)
    finisher._finish_audio(whole["audio"], whole["audio_valid"], whole["source"], draws())
    for name in ("audio", "visual"):
        assert row_wise[name].dtype == getattr(torch, dtype)
        assert torch.equal(row_wise[name], whole[name].to(getattr(torch, dtype))), name
    assert not torch.equal(whole["audio"][0, :20], whole["audio"][1, :20])   # transforms ran
