"""Stage `decode`: the raw samples of a group become rows (decoded samples) or BadRow markers.

Each row's random draws come from a generator seeded by its stream position, so a row decodes to
the same values whenever it is decoded. Bad samples are not counted here but when their batch is
finished (`BatchFinisher`), so a sample decoded early (see below) is counted once, with its own batch.

A sample is bad when a decoder refuses it (BadSample, with its reason) or raises anything else
while decoding it (counted as `undecodable`, with the exception's type): hostile bytes never end
a stream. Training replaces a bad row by a copy of a good row of the same batch. A batch with no
good row at all borrows the first good row of the following groups (decoded ahead, up to
LOOKAHEAD groups, and kept for their own turn): still a pure function of the stream, so resume
stays exact; only a stream with no usable sample in LOOKAHEAD batches in a row stops, with an
error naming the shards.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import LoaderConfig
from .decode import decode_fbank, decode_frame, decode_meta, frame_count, require_members
from .errors import BadSample
from .format import FBANK_SUFFIX, META_SUFFIX, frame_suffix
from .reader import describe
from .shardlists import TAG_SAMPLE, rng_for
from .transforms import choose_frames, label_target

LOOKAHEAD = 64


@dataclass(frozen=True)
class BadRow:
    """A sample that could not be used, with why and where (counted when its batch is finished)."""

    error: BadSample
    where: str


class RowDecoder:
    """Stage: (k, [(position, raw)]) -> (k, rows, rngs, spare); rows are dicts, BadRow or None
    (eval padding); `spare` is a good row from ahead when no row of a training batch is good."""

    def __init__(self, cfg: LoaderConfig, epoch: int, lane: int):
        self.cfg = cfg
        self.seed = (cfg.seed, epoch, TAG_SAMPLE, cfg.rank, lane)
        self.fill = cfg.mode != "eval"
        self.draws = cfg.per_sample_draws     # else no row generator is made (none would be used)

    def __call__(self, groups):
        groups = iter(groups)
        ahead: deque = deque()
        while True:
            item = ahead.popleft() if ahead else self._decode_next(groups)
            if item is None:
                return
            k, rows, rngs = item
            spare = None
            if self.fill and not any(isinstance(r, dict) for r in rows):
                spare = self._spare(groups, ahead, rows)
            yield k, rows, rngs, spare

    def _decode_next(self, groups):
        nxt = next(groups, None)
        if nxt is None:
            return None
        k, group = nxt
        rngs = [rng_for(*self.seed, p) if p is not None and self.draws else None for p, _ in group]
        return k, [self.row(raw, rng) for (_, raw), rng in zip(group, rngs)], rngs

    def _spare(self, groups, ahead: deque, rows: list) -> dict:
        for index in range(LOOKAHEAD):
            if index == len(ahead):
                item = self._decode_next(groups)
                if item is None:
                    break
                ahead.append(item)
            good = next((r for r in ahead[index][1] if isinstance(r, dict)), None)
            if good is not None:
                return good
        shards = sorted({r.where.rsplit(":", 1)[0] for r in rows if isinstance(r, BadRow)})
        raise RuntimeError(f"no usable sample in {len(ahead) + 1} batches in a row (shards "
                           f"{', '.join(shards[:5])}); check them with `avsiam verify`")

    def row(self, raw: dict | None, rng):
        if raw is None:
            return None
        try:
            if "__error__" in raw:
                raise BadSample(raw["__error__"], raw["__message__"])
            return self.decode(raw, rng)
        except BadSample as e:
            return BadRow(e, describe(raw))
        except Exception as e:  # noqa: BLE001 - whatever a decoder raises on hostile bytes
            return BadRow(BadSample("undecodable", f"{type(e).__name__}: {str(e)[:200]}"),
                          describe(raw))

    def decode(self, raw: dict, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        chosen = raw.get("__frames__")          # picked while reading (see reader.MemberFilter)
        require_members(raw, chosen)
        if chosen is None:
            stored = frame_count(raw)
            if cfg.frames == "all" and stored != cfg.num_frames:
                raise BadSample("bad_shape", f"{stored} frames stored, {cfg.num_frames} expected")
            if isinstance(cfg.frames, int) and cfg.frames >= stored:
                raise BadSample("missing_member", f"frame {cfg.frames} of {stored} stored")
            chosen = choose_frames(stored, cfg.frames, rng)
        meta = decode_meta(raw[META_SUFFIX])
        labels = meta.get("label_indices") or []
        if cfg.require_labels and not labels:
            raise BadSample("no_label", "the sample has no label (require_labels: cross-entropy "
                                        "needs one per clip)")
        if cfg.num_classes is not None and any(not 0 <= i < cfg.num_classes for i in labels):
            raise BadSample("bad_label", f"label_indices {labels} outside num_classes={cfg.num_classes}")
        fbank = decode_fbank(raw[FBANK_SUFFIX])
        frames = [decode_frame(raw[frame_suffix(i)], cfg.image_size) for i in chosen]
        return {"key": raw["__key__"], "fbank": fbank, "frames": frames,
                "labels": label_target(labels, cfg.num_classes, cfg.label_type, cfg.label_smoothing),
                "source": raw["__source__"]}
