"""Raw samples from tar shards: bytes grouped by key, nothing decoded.

Local shards are walked by `tarscan` (seekable: each kept member is read with one call, skipped
members are never read; several times less CPU than a stream walk). `pipe:`
commands (already allowed by `sources.check_url`) are read with plain webdataset (`Pipe`,
`tar_file_iterator`). Only the members the format defines are kept (KEY.fbank.npy, KEY.fN.jpg,
KEY.json); any other member, a `.pyd`, `.pickle` or `.pth` included, is skipped by name and its bytes
are never kept, so nothing else can be decoded later.

When one frame is used (a random one in training, a fixed index), only candidate frame members are
read and one is kept (`MemberFilter`): most of a 10-frame sample's JPEG bytes are never read and
none of the unused ones are buffered. A raw sample is a dict {"__key__", "__url__", "__source__",
"__nbytes__", suffix: bytes, ...} plus "__video__" and "__frames__" (the kept frame) then.
An END_OF_PASS in the shard sequence becomes a {"__flush__": True} marker for the shuffle buffer.
Shard-level failures (unreadable, truncated, fewer samples than its record says) become one error
item {"__error__": reason, "__message__": ..., "__url__": ...} in the stream: it takes a position like
a sample, so it is counted exactly once, at decode time, and replays identically on resume.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator

from webdataset.gopen import Pipe
from webdataset.tariterators import reraise_exception, tar_file_iterator

from .format import (FBANK_SUFFIX, FIRST_FRAME, FRAME_SUFFIX_RE, META_SUFFIX, frame_number,
                     frame_suffix, split_member)
from .shardlists import END_OF_PASS
from .sources import ShardRef
from .tarscan import tar_file_members

def format_member(fname: str) -> tuple[str, int | None] | None:
    """(key, frame number or None for the fbank/json) of a member the format defines; None for
    every other name (never read)."""
    key, suffix = split_member(fname)
    if suffix is None:
        return None
    if suffix in (FBANK_SUFFIX, META_SUFFIX):
        return key, None
    index = frame_number(suffix)
    return (key, index) if index is not None else None


def is_format_member(fname: str) -> bool:
    """True for the member names the format defines; everything else is never read."""
    return format_member(fname) is not None


def open_pipe(url: str):
    """The stdout of an allowed `pipe:` command (webdataset's Pipe checks its exit status)."""
    return Pipe(url[5:], mode="rb", shell=True, bufsize=1 << 16, ignore_status=[141])


def has_both_modalities(sample: dict) -> bool:
    return FBANK_SUFFIX in sample and sample.get("__video__", FIRST_FRAME in sample)


class MemberFilter:
    """Which members are read: the format's, and of a sample's frames only one when `pick` is set.

    pick = ("index", i): frame i only. pick = ("random", rng): one frame uniformly at random among
    the frames the sample has, chosen while streaming (reservoir of one: the k-th frame member
    replaces the kept one with probability 1/k; about 3 of 10 frames are read). The draws happen in
    tar order from a generator the caller seeds, so reading the same shards again replays them."""

    def __init__(self, pick: tuple | None = None):
        self.pick = pick
        self.seen: dict[str, int] = {}          # key -> frame members seen so far
        self.chosen: dict[str, int] = {}        # key -> kept frame, until `finish` takes it

    def __call__(self, fname: str) -> bool:
        member = format_member(fname)
        if member is None:
            return False
        key, index = member
        if index is None or self.pick is None:
            return True
        self.seen[key] = count = self.seen.get(key, 0) + 1
        kind, value = self.pick
        take = index == value if kind == "index" else value.random() * count < 1.0
        if take:
            self.chosen[key] = index
        return take

    def finish(self, sample: dict) -> dict:
        """On a grouped sample: keep only the chosen frame, note whether it had frames at all."""
        if self.pick is not None:
            key = sample["__key__"]
            had_frames = self.seen.pop(key, 0) > 0
            frame = self.chosen.pop(key, None)
            for name in [k for k in sample if FRAME_SUFFIX_RE.match(k) and k != frame_suffix(frame)]:
                sample["__nbytes__"] -= len(sample.pop(name))
            sample["__video__"] = had_frames
            sample["__frames__"] = [frame if frame is not None else self.pick[1]
                                    if self.pick[0] == "index" else 0]
        return sample

    def clear(self) -> None:
        self.seen.clear()
        self.chosen.clear()


def tar_members(url: str, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members `keep` accepts, in tar order (local file or allowed pipe:)."""
    if not url.startswith("pipe:"):
        yield from tar_file_members(url, keep)
        return
    stream = open_pipe(url)
    try:
        for member in tar_file_iterator(stream, handler=reraise_exception, select_files=keep):
            yield member["fname"], member["data"]
    finally:
        stream.close()


def read_shard(shard: ShardRef, members: MemberFilter | None = None) -> Iterator[dict]:
    """Raw samples of one shard in tar order, then an error item if the shard was damaged."""
    members = members or MemberFilter()
    current: dict | None = None
    usable = 0
    error = None
    try:
        for fname, data in tar_members(shard.url, members):
            key, suffix = split_member(fname)
            if current is None or key != current["__key__"]:
                if current is not None:
                    usable += has_both_modalities(members.finish(current))
                    yield current
                current = {"__key__": key, "__url__": shard.url, "__source__": shard.source,
                           "__nbytes__": 0}
            if suffix in current:
                current["__duplicate__"] = suffix
            current[suffix] = data
            current["__nbytes__"] += len(data)
    except Exception as e:  # noqa: BLE001 - any read failure of a shard is a counted, logged skip
        error = ("unreadable_shard", f"{type(e).__name__}: {e}")
    if current is not None:
        usable += has_both_modalities(members.finish(current))
        yield current
    members.clear()
    if error is None and shard.samples is not None and usable < shard.samples:
        error = ("short_shard", f"read {usable} of the {shard.samples} samples its record lists")
    if error is not None:
        yield {"__error__": error[0], "__message__": error[1], "__url__": shard.url,
               "__key__": None, "__source__": shard.source, "__nbytes__": 0}


def read_shards(shards: Iterator[ShardRef], give_up_after: int | None = None,
                members: MemberFilter | None = None) -> Iterator[dict]:
    """Raw samples of a sequence of shards, in order (members: see MemberFilter).

    An endless shard sequence in which `give_up_after` shards in a row hold no usable sample would
    spin forever; it stops with an error naming the last shard instead.
    """
    empty_run = 0
    for shard in shards:
        if shard == END_OF_PASS:
            yield {"__flush__": True, "__nbytes__": 0}
            continue
        usable = 0
        for sample in read_shard(shard, members):
            usable += "__error__" not in sample and has_both_modalities(sample)
            yield sample
        empty_run = 0 if usable else empty_run + 1
        if give_up_after is not None and empty_run >= give_up_after:
            raise RuntimeError(
                f"no usable sample (audio and frames) in {empty_run} shards in a row, the last "
                f"{shard.url}; check the shards with `avsiam verify` or pass other urls")


_KEY_SAFE = re.compile(r"^[A-Za-z0-9_/-]+$")


def describe(sample: dict) -> str:
    """`url:key` for messages (the key only if it is printable)."""
    key = sample.get("__key__")
    key = key if isinstance(key, str) and _KEY_SAFE.match(key) else repr(key)
    return f"{sample.get('__url__')}:{key}"
