"""Hardening of the loaders (issue 9): only safe member types are decoded, pipe: is gated, buffers
are bounded, and bad samples are counted skips. Each test fails if its protection is removed."""
from __future__ import annotations

import io
import logging
import os
import pickle

import numpy as np
import pytest
import torch

from shards.buffer import ShuffleBuffer
from shards.errors import BadSample
from shards.loader import make_loader
from shards.reader import read_shard
from shards.sources import ShardRef
from shards.stream import build_lane, run_stages
from test_loader_shards import jpeg_bytes, npy_bytes, sample_key, write_split

torch.set_num_threads(1)
SMALL = dict(audio_frames=16, image_size=8)


class CodeOnUnpickle:
    """Unpickling this creates the file MARKER names: proof that code from a shard ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def object_npy(payload) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([payload, 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


def torch_file(payload) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": payload}, buf)
    return buf.getvalue()


@pytest.mark.multiproc
def test_code_carrying_members_are_never_decoded(tmp_path):
    marker = tmp_path / "code_ran"
    payload = CodeOnUnpickle(str(marker))
    evil = {"pyd": pickle.dumps(payload), "pickle": pickle.dumps(payload), "pth": torch_file(payload),
            "extra.npy": object_npy(payload)}
    # the payloads are live: the usual decoders would run them
    pickle.loads(evil["pyd"])
    np.load(io.BytesIO(evil["extra.npy"]), allow_pickle=True)
    assert marker.exists()
    marker.unlink()

    def damage(shard, index, members):
        if (shard, index) == (1, 2):
            members["fbank.npy"] = object_npy(payload)      # the fbank member itself
        return members

    tars = write_split(tmp_path / "d", [5, 5], fbank_frames=20, frame_size=8, damage=damage,
                       extra_members=lambda s, i: evil)
    raw = list(read_shard(ShardRef(str(tars[0]), 5)))
    assert len(raw) == 5 and not any(set(evil) & set(sample) for sample in raw)   # never kept
    loader = make_loader(str(tmp_path / "d"), batch_size=3, num_workers=2, lanes=2,
                         shuffle_buffer=0, **SMALL)
    keys = [k for b in loader for k in b["keys"]]
    assert not marker.exists()
    assert sample_key(1, 2) not in keys and sample_key(0, 0) in keys     # extra members ignored
    assert loader.skipped_by_reason == {"bad_dtype": 1}          # refused before np.load


def test_pipe_urls_need_allow_pipe(tmp_path):
    tars = write_split(tmp_path, [4], fbank_frames=20, frame_size=8)
    url = f"pipe:cat {tars[0]}"
    with pytest.raises(ValueError, match="allow_pipe"):
        make_loader(url, batch_size=2, samples_per_epoch=4, **SMALL)
    piped = make_loader(url, batch_size=2, samples_per_epoch=4, allow_pipe=True, shuffle_buffer=0,
                        **SMALL)
    local = make_loader(str(tars[0]), batch_size=2, shuffle_buffer=0, **SMALL)
    assert [b["keys"] for b in piped] == [b["keys"] for b in local]
    with pytest.raises(ValueError, match="only local paths"):
        make_loader("http://example.invalid/a.tar", batch_size=2, samples_per_epoch=4,
                    allow_pipe=True)


def test_urls_read_from_dataset_json_never_run_commands(tmp_path):
    marker = tmp_path / "command_ran"
    write_split(tmp_path / "d", [4], fbank_frames=20, frame_size=8,
                dataset_json={"shards": [f"pipe:touch {marker}", "train-000000.tar"]})
    with pytest.raises(ValueError, match="plain shard file names"):
        make_loader(str(tmp_path / "d"), batch_size=2, allow_pipe=True, **SMALL)
    assert not marker.exists()
    write_split(tmp_path / "e", [4], fbank_frames=20, frame_size=8,
                dataset_json={"shards": ["train-000000.tar"]})
    assert len(make_loader(str(tmp_path / "e"), batch_size=2, **SMALL)) == 2


def test_shuffle_buffer_bounds_hold(tmp_path):
    tars = write_split(tmp_path, [12], fbank_frames=100, frame_size=8)
    raw = list(read_shard(ShardRef(str(tars[0]), 12)))
    size = raw[0]["__nbytes__"]
    for items, max_bytes, most in ((5, 1 << 30, 5), (100, int(2.5 * size), 2)):
        buffer = ShuffleBuffer(items, max_bytes, np.random.default_rng(0))
        out = list(buffer(iter(raw)))
        assert sorted(s["__key__"] for s in out) == sorted(s["__key__"] for s in raw)
        assert [s["__key__"] for s in out] != [s["__key__"] for s in raw]
        assert buffer.peak_items == most and buffer.peak_bytes <= max_bytes

    loader = make_loader(str(tmp_path), batch_size=2, shuffle_buffer=4,
                         shuffle_buffer_bytes=3 * size, **SMALL)
    stages = build_lane(loader.spec, epoch=0, lane=0, skip=0)
    shuffle = dict(stages)["shuffle"]
    for _, batch in zip(range(4), run_stages(stages)):
        pass
    assert (shuffle.size, shuffle.max_bytes) == (4, 3 * size)
    assert shuffle.peak_items == 3 and shuffle.peak_bytes <= 3 * size


def damaged(shard, index, members):
    if (shard, index) == (0, 1):
        for name in [m for m in members if m.endswith(".jpg")]:
            members[name] = b"\xff\xd8\xff" + b"not a jpeg" * 10
    if (shard, index) == (1, 2):
        members["fbank.npy"] = npy_bytes(np.zeros((20, 64), dtype=np.float16))
    if (shard, index) == (2, 0):
        del members["json"]
    if (shard, index) == (2, 3):
        members["fbank.npy"] = npy_bytes(np.full((20, 128), np.nan, dtype=np.float16))
    if (shard, index) == (3, 4):
        members["f0.jpg"] = jpeg_bytes(8, 0)[:40]
    return members


@pytest.mark.multiproc
def test_bad_samples_are_counted_skips_across_workers(tmp_path):
    tars = write_split(tmp_path, [6, 6, 6, 6, 6], fbank_frames=20, frame_size=8, damage=damaged,
                       single_modality={(4, 5)})
    with open(tars[4], "r+b") as f:            # shard 4 ends in the middle of a member
        f.truncate(os.path.getsize(tars[4]) * 2 // 3)
    loader = make_loader(str(tmp_path), batch_size=4, num_workers=2, lanes=2, shuffle_buffer=0,
                         frames=0, **SMALL)
    batches = list(loader)
    assert len(batches) == len(loader) == 29 // 4
    invalid = sum(int((~b["valid"]).sum()) for b in batches)
    keys = {k for b in batches for k, ok in zip(b["keys"], b["valid"]) if ok}
    for bad in [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5)]:
        assert sample_key(*bad) not in keys
    reasons = loader.skipped_by_reason
    assert {"corrupt_jpg", "bad_shape", "missing_member", "nonfinite",
            "unreadable_shard"} <= set(reasons)
    assert loader.skipped == invalid == sum(sum(b["skipped"].values()) for b in batches)
    assert all(torch.isfinite(b["audio"]).all() for b in batches)
    assert loader.state_dict()["skipped"] == reasons


def test_raise_policy_raises_on_the_first_bad_sample(tmp_path):
    write_split(tmp_path, [6], fbank_frames=20, frame_size=8, damage=damaged)
    loader = make_loader(str(tmp_path), batch_size=2, on_error="raise", shuffle_buffer=0, **SMALL)
    with pytest.raises(BadSample, match="clip000x0001"):
        list(loader)


def npy_claiming(shape) -> bytes:
    """A valid float16 .npy header claiming `shape`, followed by a few bytes only."""
    header = npy_bytes(np.zeros((1, 128), dtype=np.float16))
    head_len = int.from_bytes(header[8:10], "little") + 10
    text = header[10:head_len].decode("latin1").replace("(1, 128)", repr(tuple(shape)))
    text = text.rstrip("\n").rstrip(" ")
    text += " " * (head_len - 10 - len(text) - 1) + "\n"
    return header[:10] + text.encode("latin1") + b"\0" * 64


def bombs(shard, index, members):
    if index == 1:
        members["fbank.npy"] = npy_claiming((10 ** 9, 128))        # 256 GB promised
    if index == 2:
        frame = bytearray(members["f0.jpg"])
        at = frame.find(b"\xff\xc0")
        frame[at + 5:at + 9] = (60000).to_bytes(2, "big") * 2      # 60000 x 60000 pixels
        for name in [m for m in members if m.endswith(".jpg")]:
            members[name] = bytes(frame)
    return members


def test_size_bombs_are_refused_before_allocating(tmp_path, caplog):
    tars = write_split(tmp_path, [5, 5], fbank_frames=20, frame_size=8, damage=bombs)
    with open(tars[1], "r+b") as f:            # shard 1: first member's header claims 4 GiB
        header = bytearray(f.read(512))
        header[124:136] = b"%011o\0" % (4 << 30)
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        f.seek(0)
        f.write(header)
    loader = make_loader(str(tmp_path), batch_size=2, shuffle_buffer=0, frames=0, **SMALL)
    with caplog.at_level(logging.WARNING, logger="shards"):
        batches = list(loader)
    assert len(batches) == 5 and all(torch.isfinite(b["audio"]).all() for b in batches)
    assert set(loader.skipped_by_reason) == {"corrupt_npy", "bad_shape", "unreadable_shard"}
    assert "claims 4294967296 bytes" in caplog.text and "60000x60000" in caplog.text


def test_a_batch_of_only_bad_samples_borrows_a_good_one(tmp_path):
    def first_two_bad(shard, index, members):
        if index < 2:
            members["fbank.npy"] = b"garbage"
        return members

    write_split(tmp_path, [8], fbank_frames=20, frame_size=8, damage=first_two_bad)
    options = dict(batch_size=2, shuffle_buffer=0, **SMALL)
    batches = list(make_loader(str(tmp_path), **options))
    assert batches[0]["keys"] == [sample_key(0, 2)] * 2 and not batches[0]["valid"].any()
    assert batches[1]["keys"] == [sample_key(0, 2), sample_key(0, 3)] and batches[1]["valid"].all()
    resumed = make_loader(str(tmp_path), **options)
    resumed.load_state_dict(dict(resumed.state_dict(), batches=1))
    assert [b["keys"] for b in resumed] == [b["keys"] for b in batches[1:]]
    assert resumed.skipped == 0            # the bad samples belong to the batch before the resume
