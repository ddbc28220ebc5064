"""Raw samples from tar shards: bytes grouped by key, nothing decoded.

Shards are walked by `tarscan` (a local file seekably: each kept member is read with one call,
skipped members are never read; a `pipe:` command, already allowed by `sources.check_url`, as a
stream). Only the members the format defines are kept (KEY.fbank.npy, KEY.fN.jpg, KEY.json); any
other member, a `.pyd`, `.pickle` or `.pth` included, is skipped by name and its bytes are never
kept, so nothing else can be decoded later.

Byte budget: all members of one sample together may claim at most `max_sample_bytes` in their tar
headers (shards.format.MAX_SAMPLE_BYTES by default). Past it the sample's further members are not
read and the sample becomes an error item, so however a shard's members are sized, a lane holds
at most one budget of a sample's bytes at a time (plus its shuffle buffer's bytes). A sample whose
key is not a safe key (format.is_safe_key: `../x`, `/abs`, ...) becomes an error item too.

When one frame is used (a random one in training, a fixed index), only candidate frame members are
read and one is kept (`MemberFilter`): most of a 10-frame sample's JPEG bytes are never read and
none of the unused ones are buffered. A raw sample is a dict {"__key__", "__url__", "__source__",
"__nbytes__", suffix: bytes, ...} plus "__video__" and "__frames__" (the kept frame) then.
An END_OF_PASS in the shard sequence becomes a {"__flush__": True} marker for the shuffle buffer.
Failures become error items {"__error__": reason, "__message__": ..., "__url__": ..., "__key__": key
or None} in the stream: a refused sample (oversized_sample, unsafe_key) where the sample was, a
shard-level failure (unreadable, truncated, fewer samples than its record says) after the shard's
samples. An error item takes a position like a sample, so it is counted exactly once, at decode
time, and replays identically on resume. Damage found after all the samples a shard's record
lists were read loses no sample: it is logged, not counted (an item there would take a position
the record does not count, and push eval's last sample out of its lane).
"""
from __future__ import annotations

import logging
from typing import Iterator

from webdataset.gopen import Pipe

from .format import (FBANK_SUFFIX, FIRST_FRAME, FRAME_SUFFIX_RE, MAX_SAMPLE_BYTES, META_SUFFIX,
                     frame_number, frame_suffix, is_safe_key, split_member)
from .shardlists import END_OF_PASS
from .sources import ShardRef
from .tarscan import READ, REFUSE, SKIP, tar_file_members, tar_stream_members

log = logging.getLogger("shards")


def open_pipe(url: str):
    """The stdout of an allowed `pipe:` command (webdataset's Pipe checks its exit status)."""
    return Pipe(url[5:], mode="rb", shell=True, bufsize=1 << 16, ignore_status=[141])


def has_both_modalities(sample: dict) -> bool:
    return FBANK_SUFFIX in sample and sample.get("__video__", FIRST_FRAME in sample)


class MemberFilter:
    """Which members are read (tarscan's `keep`): the format's, within the sample byte budget, and
    of a sample's frames only one when `pick` is set.

    Budget: the sizes the tar headers declare for all members of a key add up, in tar order; once
    they pass `max_sample_bytes` every further member of that key is REFUSEd (never read).
    pick = ("index", i): frame i only. pick = ("random", rng): one frame uniformly at random among
    the frames the sample has, chosen while streaming (reservoir of one: the k-th frame member
    replaces the kept one with probability 1/k; about 3 of 10 frames are read). The draws happen in
    tar order from a generator the caller seeds, so reading the same shards again replays them."""

    def __init__(self, pick: tuple | None = None, max_sample_bytes: int = MAX_SAMPLE_BYTES):
        self.pick = pick
        self.budget = max_sample_bytes
        self.key: str | None = None             # the sample being read, and what its members claim
        self.claimed = 0
        self.seen: dict[str, int] = {}          # key -> frame members seen so far
        self.chosen: dict[str, int] = {}        # key -> kept frame, until `finish` takes it

    def __call__(self, fname: str, size: int) -> int:
        key, suffix = split_member(fname)
        if suffix is None:
            return SKIP                         # not a member of any sample
        if key != self.key:
            self.key, self.claimed = key, 0
        self.claimed += size
        if self.claimed > self.budget:
            return REFUSE
        if suffix == FBANK_SUFFIX or suffix == META_SUFFIX:
            return READ
        index = frame_number(suffix)
        if index is None:
            return SKIP
        if self.pick is None:
            return READ
        self.seen[key] = count = self.seen.get(key, 0) + 1
        kind, value = self.pick
        take = index == value if kind == "index" else value.random() * count < 1.0
        if take:
            self.chosen[key] = index
        return READ if take else SKIP

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
        self.key, self.claimed = None, 0


def tar_members(url: str, keep: MemberFilter) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes or None if refused) of the members `keep` reads or refuses, in tar order
    (a local file or an allowed pipe:)."""
    if not url.startswith("pipe:"):
        yield from tar_file_members(url, keep)
        return
    stream = open_pipe(url)
    try:
        yield from tar_stream_members(stream, keep)
    finally:
        stream.close()


def read_shard(shard: ShardRef, members: MemberFilter | None = None) -> Iterator[dict]:
    """Raw samples of one shard in tar order (refused ones as error items), then an error item if
    the shard was damaged."""
    members = members or MemberFilter()
    current: dict | None = None
    usable = 0
    error = None
    try:
        for fname, data in tar_members(shard.url, members):
            key, suffix = split_member(fname)
            if current is None or key != current["__key__"]:
                if current is not None:
                    current = _finished(current, members)
                    usable += _present(current)
                    yield current
                current = {"__key__": key, "__url__": shard.url, "__source__": shard.source,
                           "__nbytes__": 0}
            if data is None:
                current["__refused__"] = True
                continue
            if suffix in current:
                current["__duplicate__"] = suffix
            current[suffix] = data
            current["__nbytes__"] += len(data)
    except Exception as e:  # noqa: BLE001 - any read failure of a shard is a counted, logged skip
        error = ("unreadable_shard", f"{type(e).__name__}: {e}")
    if current is not None:
        current = _finished(current, members)
        usable += _present(current)
        yield current
    members.clear()
    if error is None and shard.samples is not None and usable < shard.samples:
        error = ("short_shard", f"read {usable} of the {shard.samples} samples its record lists")
    if error is not None and shard.samples is not None and usable >= shard.samples:
        # no sample was lost: an error item would take a position the record does not count
        log.warning("shards: %s is damaged after the %d samples its record lists (all read): %s; "
                    "check it with `avsiam verify`", shard.url, usable, error[1])
        error = None
    if error is not None:
        yield {"__error__": error[0], "__message__": error[1], "__url__": shard.url,
               "__key__": None, "__source__": shard.source, "__nbytes__": 0}


def _finished(sample: dict, members: MemberFilter) -> dict:
    """The grouped sample, or an error item in its place when it was refused or its key is unsafe."""
    members.finish(sample)
    key = sample["__key__"]
    if is_safe_key(key) and "__refused__" not in sample:
        return sample
    if not is_safe_key(key):
        reason, message = "unsafe_key", (f"key {key!r} is not [A-Za-z0-9_-]+ (at most 128 "
                                         "characters); such a sample is never used")
    else:
        reason, message = "oversized_sample", (
            f"its members claim more than {members.budget} bytes together in the tar headers; "
            "raise max_sample_bytes if such samples are intended")
    return {"__error__": reason, "__message__": message, "__url__": sample["__url__"],
            "__key__": key, "__source__": sample["__source__"], "__nbytes__": 0,
            "__sample__": True}


def _present(sample: dict) -> bool:
    """Whether the sample counts among those the shard's record lists as usable."""
    return "__sample__" in sample or has_both_modalities(sample)


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


def describe(sample: dict) -> str:
    """`url:key` for messages (the key quoted unless it is a safe key)."""
    key = sample.get("__key__")
    return f"{sample.get('__url__')}:{key if isinstance(key, str) and is_safe_key(key) else repr(key)}"
