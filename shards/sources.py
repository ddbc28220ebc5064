"""Where the shards are: URL expansion, the `pipe:` gate, per-shard sample counts, dataset.json.

`urls` given to `make_loader` may be
  - a brace pattern (`data/train-{000000..000099}.tar`, several joined with `::`),
  - a list of URLs or patterns,
  - a directory written by `avsiam shard` (its committed shards: those with a .stats.json),
  - for mixing, a list of `(urls, weight)` pairs, each `urls` any of the above.

Security: a `pipe:CMD` URL runs CMD in a shell. It is accepted only when the caller passes
`allow_pipe=True` (the user's own command line or config) and only for URLs given directly; shard
names read from files (a directory's dataset.json "shards" list) must be plain shard file names inside
that directory and never enable `pipe:`. Other URL schemes (http://, s3://, ...) are refused: wrap
them in `pipe:curl -s ...` explicitly. Local files are opened with `open()`, never through gopen's
environment-driven URL rewriting.

Counts: a shard's usable samples (status ok, both modalities) come from its stats.json or Parquet
record; they fix the epoch length up front so every rank yields the same number of batches.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from .format import (DATASET_JSON, SHARD_NAME_RE, STATUS_OK)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class ShardRef:
    """One shard: where to read it, how many usable samples it holds (None: unknown), its dataset."""

    url: str
    samples: int | None
    source: int = 0


@dataclass(frozen=True)
class DatasetSource:
    """One dataset of a (possibly mixed) loader."""

    shards: tuple[ShardRef, ...]
    weight: float = 1.0
    facts: dict | None = None       # what dataset.json says (see read_dataset_facts)
    root: str | None = None         # the local folder of the shards (dataset.json, manifest.parquet)

    @property
    def samples(self) -> int | None:
        counts = [s.samples for s in self.shards]
        return None if any(c is None for c in counts) else sum(counts)


def resolve_sources(urls, *, allow_pipe: bool = False) -> list[DatasetSource]:
    """Turn the `urls` argument into datasets with counted shards (see the module doc)."""
    if _is_mix(urls):
        if not urls:
            raise ValueError("an empty list of (urls, weight) pairs was given")
        pairs = [(u, float(w)) for u, w in urls]
        if any(w <= 0 for _, w in pairs):
            raise ValueError(f"mixing weights must be > 0, got {[w for _, w in pairs]}")
    else:
        pairs = [(urls, 1.0)]
    out = []
    for index, (spec, weight) in enumerate(pairs):
        shard_urls, root = expand_urls(spec, allow_pipe=allow_pipe)
        facts = read_dataset_facts(root) if root is not None else None
        shards = tuple(ShardRef(u, count_samples(u), index) for u in shard_urls)
        out.append(DatasetSource(shards=shards, weight=weight, facts=facts, root=root))
    return out


def _is_mix(urls) -> bool:
    return (isinstance(urls, (list, tuple)) and len(urls) > 0
            and all(isinstance(x, (list, tuple)) and len(x) == 2
                    and isinstance(x[1], (int, float)) for x in urls))


def expand_urls(spec, *, allow_pipe: bool) -> tuple[list[str], str | None]:
    """Shard URLs of one dataset and the local folder holding its dataset.json (or None)."""
    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str) and os.path.isdir(spec):
        return _directory_shards(spec), spec
    items = spec.split("::") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in items:
        item = str(item)
        if item.startswith("pipe:"):
            urls.append(item)          # braces inside a command belong to the command
        else:
            urls.extend(braceexpand.braceexpand(item))
    if not urls:
        raise ValueError(f"no shard URLs in {spec!r}")
    urls = [check_url(u, allow_pipe=allow_pipe) for u in urls]
    folders = {os.path.dirname(u) for u in urls if not u.startswith("pipe:")}
    root = folders.pop() if len(folders) == 1 and not any(u.startswith("pipe:") for u in urls) else None
    return urls, root


def check_url(url: str, *, allow_pipe: bool) -> str:
    """Accept a local path (optionally `file:`) or, with allow_pipe, a `pipe:` command."""
    if url.startswith("pipe:"):
        if not allow_pipe:
            raise ValueError(f"refusing shard URL {url!r}: pipe: URLs run a shell command; pass "
                             "allow_pipe=True (--allow-pipe) if the command is your own")
        return url
    if url.startswith("file:"):
        return re.sub(r"^file:(//)?", "", url)
    if _SCHEME.match(url) and not re.match(r"^[A-Za-z]:[\\/]", url):
        raise ValueError(f"refusing shard URL {url!r}: only local paths and (with allow_pipe=True) "
                         "pipe: commands are read; for remote data use e.g. 'pipe:curl -s URL'")
    return url


def _directory_shards(folder: str) -> list[str]:
    """Committed shards of a folder, or those its dataset.json names (plain names only)."""
    listed = _dataset_json(folder).get("shards")
    if listed is not None:
        entries = list(braceexpand.braceexpand(listed)) if isinstance(listed, str) else listed
        names = [_plain_shard_name(folder, entry) for entry in entries]
    else:
        names = sorted(n for n in os.listdir(folder) if SHARD_NAME_RE.match(n)
                       and os.path.exists(os.path.join(folder, n[:-4] + ".stats.json")))
    if not names:
        raise ValueError(f"no committed shards (NAME.tar with NAME.stats.json) in {folder}; run "
                         "`avsiam shard` to finish them")
    return [os.path.join(folder, n) for n in names]


def _plain_shard_name(folder: str, entry) -> str:
    """A shard name read from a file: must be a bare shard file name, never a command or a path."""
    name = entry if isinstance(entry, str) else None
    if name is None or os.path.basename(name) != name or not SHARD_NAME_RE.match(name):
        raise ValueError(f"{folder}/{DATASET_JSON} lists shard {entry!r}: only plain shard file "
                         "names inside that folder are accepted (never pipe: commands or paths)")
    return name


def count_samples(url: str) -> int | None:
    """Usable samples (ok, audio and video) of a local shard; None if unknown.

    From its stats.json when every ok sample there has both modalities (the pipeline's default),
    else from its Parquet record."""
    if url.startswith("pipe:") or not url.endswith(".tar"):
        return None
    stem = url[:-4]
    try:
        with open(stem + ".stats.json") as f:
            stats = json.load(f)
        if isinstance(stats, dict) and stats.get("ok") is not None \
                and stats.get("ok") == stats.get("with_audio") == stats.get("with_video"):
            return int(stats["ok"])
    except (OSError, ValueError, TypeError):
        pass
    if not os.path.exists(stem + ".parquet"):
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(stem + ".parquet", columns=["status", "has_audio", "has_video"]).to_pydict()
    return sum(1 for st, a, v in zip(table["status"], table["has_audio"], table["has_video"])
               if st == STATUS_OK and a and v)


def _dataset_json(folder: str) -> dict:
    path = os.path.join(folder, DATASET_JSON)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); rewrite it with `avsiam stats`") from e
    return data if isinstance(data, dict) else {}


def read_dataset_facts(folder: str) -> dict:
    """fbank_mean/std, frame_size, num_frames, label_counts, num_classes from dataset.json, if present."""
    data = _dataset_json(folder)
    params = data.get("params") or data.get("parameters") or {}
    stats = data.get("fbank_stats") or data.get("stats") or {}
    facts = {
        "fbank_mean": _first(stats.get("mean"), data.get("fbank_mean")),
        "fbank_std": _first(stats.get("std"), data.get("fbank_std")),
        "frame_size": _first(params.get("frame_size"), data.get("frame_size")),
        "num_frames": _first(params.get("num_frames"), data.get("num_frames")),
        "label_counts": data.get("label_counts"),
        "num_classes": (data.get("labels") or {}).get("num_classes")
        if isinstance(data.get("labels"), dict) else None,
    }
    return {k: v for k, v in facts.items() if v is not None}


def _first(*values):
    return next((v for v in values if v is not None), None)
