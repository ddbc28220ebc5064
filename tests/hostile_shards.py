"""Crafted shards for the hostile-input tests of the loader and `avsiam verify` (issue 15).

Built on `test_loader_shards.write_split` (real tars, records, stats files): good shards plus shards
whose bytes a hostile user chose: tar headers with lying size fields, members named to escape the
folder, sparse members claiming hundreds of MiB, JSON nested past Python's recursion limit, FIFOs
where files should be. Also what runs a loader in every mode and rank, and a child process that
reports its peak RSS.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from shards import format as F
from shards.loader import make_loader
from test_loader_shards import npy_bytes, sample_key, sample_members, write_split

MODES = ("pretrain", "finetune", "eval")
SMALL = dict(fbank_frames=20, frame_size=8)           # write_split: tiny samples
GOOD = [3, 3, 3, 3]                                   # enough shards for 2 ranks x 2 lanes
DEEP_JSON = b"[" * 60_000                             # under the 64 KiB cap, past the recursion limit
REPO = Path(__file__).resolve().parents[1]


def options(mode: str, workers: int, **extra) -> dict:
    """Loader options of a mode, tiny outputs; lanes = workers."""
    out = dict(mode=mode, batch_size=2, num_workers=workers, audio_frames=16, image_size=8)
    if mode != "pretrain":
        out["num_classes"] = 5
    return {**out, **extra}


def reaching_options(urls, mode: str, workers: int, **extra) -> dict:
    """options(), with training epochs 8 times the data: every lane then wraps into a pass over
    all shards and meets every hostile sample (eval reads each sample once anyway)."""
    if mode != "eval" and "samples_per_epoch" not in extra:
        probe = make_loader(urls, **options(mode, 0, **extra))
        extra["samples_per_epoch"] = 8 * probe.spec.datasets[0].samples
    return options(mode, workers, **extra)


def run_every_rank(urls, mode: str, workers: int, world_size: int = 2, **extra) -> Counter:
    """Every rank of `world_size` yields len(loader) batches, the same count on each, with finite
    audio; the ranks' skip counts summed (see reaching_options)."""
    lengths, skipped = [], Counter()
    for rank in range(world_size):
        loader = make_loader(urls, rank=rank, world_size=world_size,
                             **reaching_options(urls, mode, workers, **extra))
        batches = list(loader)
        assert len(batches) == len(loader), (mode, workers, rank)
        assert all(torch.isfinite(b["audio"]).all() for b in batches)
        assert sum(sum(b["skipped"].values()) for b in batches) == loader.skipped
        lengths.append(len(batches))
        skipped.update(loader.skipped_by_reason)
    assert len(set(lengths)) == 1, f"ranks yield {lengths} batches"
    return skipped


def good_split(folder: Path, extra: list[int] = (), **kw) -> list[Path]:
    """GOOD shards plus len(extra) more (to be damaged), all committed."""
    return write_split(folder, GOOD + list(extra), **SMALL, **kw)


# --- tar bytes --------------------------------------------------------------------------------
def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 1_700_000_000
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def set_size_field(tar: Path, field: bytes, at: int = 0) -> None:
    """Write `field` (12 bytes) as the size of the header at byte `at`, with a valid checksum."""
    assert len(field) == 12
    with open(tar, "r+b") as f:
        f.seek(at)
        block = bytearray(f.read(512))
        block[124:136] = field
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        f.seek(at)
        f.write(block)


def prepend_member(tar: Path, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    """Put a member (`kind`: e.g. a symlink, whose data is its target) before the tar's others."""
    rest = tar.read_bytes()
    info = tarfile.TarInfo(name)
    info.type, info.mtime = kind, 1_700_000_000
    if kind == tarfile.SYMTYPE:
        info.linkname, data = data.decode(), b""
    info.size = len(data)
    tar.write_bytes(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + data
                    + bytes(-len(data) % 512) + rest)


def append_member(tar: Path, name: str, data: bytes) -> int:
    """Put a member after the tar's others; returns the byte where its header starts."""
    with tarfile.open(tar) as t:
        last = t.getmembers()[-1]
    at = last.offset_data + last.size + (-last.size % 512)
    with open(tar, "r+b") as f:
        f.truncate(at)
        f.seek(at)
        f.write(header(name, len(data)) + data + bytes(-len(data) % 512) + bytes(1024))
    return at


def write_members(tar: Path, members: list[tuple[str, bytes, int]]) -> None:
    """A tar of (name, first bytes, claimed size) members; the bytes past the first are a hole
    (sparse: a member of hundreds of MiB takes no disk)."""
    with open(tar, "wb") as f:
        for name, head, size in members:
            f.write(header(name, size))
            f.write(head)
            f.seek(size - len(head) + (-size % 512), os.SEEK_CUR)
        f.write(bytes(1024))


def sparse_sample_tar(tar: Path, shard: int, frame_bytes: int, num_frames: int = 3) -> None:
    """One sample whose frames each claim `frame_bytes` (a real JPEG, then zeros)."""
    real = sample_members(shard, 0, num_frames=num_frames, frame_size=8, fbank_frames=20,
                          num_classes=5)
    key = sample_key(shard, 0)
    members = [(f"{key}.{F.FBANK_SUFFIX}", real[F.FBANK_SUFFIX], len(real[F.FBANK_SUFFIX]))]
    members += [(f"{key}.{F.frame_suffix(i)}", real[F.frame_suffix(i)], frame_bytes)
                for i in range(num_frames)]
    members.append((f"{key}.{F.META_SUFFIX}", real[F.META_SUFFIX], len(real[F.META_SUFFIX])))
    write_members(tar, members)


# Keys that are not [A-Za-z0-9_-]+: paths out of the folder, a GNU long name and a pax path with
# '..', a space, one character too many.
GNU_UNSAFE_KEYS = ["../../evil", "/abs/path", "../" + "x" * 120]
PAX_UNSAFE_KEYS = ["a" * 60 + "/../" + "b" * 60, "with space", "k" * (F.KEY_MAX_LEN + 1)]


def unsafe_key_tar(tar: Path, shard: int, keys: list[str], tar_format: int) -> None:
    """Complete, well-formed samples under `keys` (GNU_FORMAT: long names in 'L' headers;
    PAX_FORMAT: in pax 'path' records)."""
    with tarfile.open(tar, "w", format=tar_format) as out:
        for index, key in enumerate(keys):
            members = sample_members(shard, index, num_frames=3, frame_size=8, fbank_frames=20,
                                     num_classes=5)
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime = len(data), 1_700_000_000
                out.addfile(info, io.BytesIO(data))


def npy_claiming(shape) -> bytes:
    """A float16 .npy header claiming `shape`, followed by 64 bytes only."""
    head = npy_bytes(np.zeros((1, 128), dtype=np.float16))
    length = int.from_bytes(head[8:10], "little") + 10
    text = head[10:length].decode("latin1").replace("(1, 128)", repr(tuple(shape))).rstrip()
    text += " " * (length - 10 - len(text) - 1) + "\n"
    return head[:10] + text.encode("latin1") + bytes(64)


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))


# --- a child process's peak RSS -----------------------------------------------------------------
def run_child(code: str, timeout: float) -> dict:
    """Run `code` in a fresh Python (tests/ and the repo importable); it prints one JSON line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
