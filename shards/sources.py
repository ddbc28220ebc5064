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

Checked before anything heavy: every local shard exists and is a regular file (the error names the
first that is not); a brace pattern is expanded only after an upper bound of its size is computed
from its text (`brace_bound`), and never to more than MAX_SHARDS names (braceexpand materialises
each brace group, so `{000000..999999}` alone would hold a million strings).

Counts: a shard's usable samples (status ok, both modalities) come from its Parquet record
(shards.records); they fix the epoch length up front so every rank yields the same number of
batches.
"""
from __future__ import annotations

import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from .dataset_facts import FACTS, read_dataset_facts, read_dataset_json
from .files import MetadataError, is_regular, kind_of
from .format import DATASET_JSON, SHARD_NAME_RE
from .records import usable_samples

MAX_SHARDS = 1 << 20            # shards of one dataset (LAION-5B at 10,000 samples a shard: 500,000)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$|^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")


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


def resolve_sources(urls, *, allow_pipe: bool = False, wanted=FACTS) -> list[DatasetSource]:
    """Turn the `urls` argument into datasets with counted shards (see the module doc); `wanted`:
    the dataset.json facts the caller uses (shards.dataset_facts)."""
    if _is_mix(urls):
        if not urls:
            raise ValueError("an empty list of (urls, weight) pairs was given")
        pairs = [(u, float(w)) for u, w in urls]
        if any(not w > 0 for _, w in pairs):
            raise ValueError(f"mixing weights must be > 0, got {[w for _, w in pairs]}")
    else:
        pairs = [(urls, 1.0)]
    out = []
    for index, (spec, weight) in enumerate(pairs):
        shard_urls, root = expand_urls(spec, allow_pipe=allow_pipe)
        facts = read_dataset_facts(root, wanted) if root is not None else None
        shards = tuple(ShardRef(u, n, index) for u, n in zip(shard_urls, count_all(shard_urls)))
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
            urls.append(check_url(item, allow_pipe=allow_pipe))   # braces belong to the command
            continue
        alone = len(items) == 1 and brace_bound(item) == 1     # one path: say so if it is missing
        for url in expand_pattern(item, MAX_SHARDS - len(urls)):
            urls.append(check_local_shard(check_url(url, allow_pipe=allow_pipe), alone))
    if not urls:
        raise ValueError(f"no shard URLs in {spec!r}")
    folders = {os.path.dirname(u) for u in urls if not u.startswith("pipe:")}
    root = folders.pop() if len(folders) == 1 and not any(u.startswith("pipe:") for u in urls) else None
    return urls, root


def expand_pattern(pattern: str, limit: int = MAX_SHARDS):
    """The names a brace pattern stands for, lazily; ValueError if it may stand for more than
    `limit` (judged from the pattern's text before anything is expanded)."""
    bound = brace_bound(pattern)
    if bound > limit:
        raise ValueError(f"shard pattern {pattern[:200]!r} stands for up to {bound} names, more "
                         f"than the {limit} shards a loader accepts; give a narrower pattern or "
                         "the folder `avsiam shard` wrote")
    return braceexpand.braceexpand(pattern)


def brace_bound(pattern: str) -> int:
    """An upper bound on the number of names `braceexpand` makes of `pattern`: the product over
    its brace groups (nested ones included) of their sizes (a range's length, else the number of
    comma-separated alternatives at that level). Backslash escapes are honoured like braceexpand's."""
    bound, stack, i = 1, [], 0          # stack: [start, commas] of the open groups
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            stack.append([i, 0])
        elif char == "," and stack:
            stack[-1][1] += 1
        elif char == "}" and stack:
            start, commas = stack.pop()
            bound *= _range_size(pattern[start + 1:i]) if not commas else commas + 1
        i += 1
    return bound


def _range_size(expr: str) -> int:
    match = _RANGE.match(expr)
    if match is None:
        return 1
    if match.group(1) is not None:
        low, high, step = int(match.group(1)), int(match.group(2)), match.group(3)
    else:
        low, high, step = ord(match.group(4)), ord(match.group(5)), match.group(6)
    return abs(high - low) // max(1, abs(int(step or 1))) + 1


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


def check_local_shard(path: str, alone: bool = False) -> str:
    """A local shard must exist and be a regular file (never a FIFO, device or directory)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if alone:
            raise ValueError(f"no such shard folder or file: {path} ({e.strerror}); give a folder "
                             "written by `avsiam shard`, a .tar shard or a brace pattern") from None
        raise ValueError(f"shard {path} does not exist ({e.strerror}); check the pattern or list "
                         "the folder `avsiam shard` wrote instead") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"shard {path} is {kind_of(mode)}, not a regular file; remove it or "
                         "write the shard again with `avsiam shard`")
    return path


def _directory_shards(folder: str) -> list[str]:
    """Committed shards of a folder, or those its dataset.json names (plain names only)."""
    listed = read_dataset_json(folder).get("shards")
    if listed is not None:
        if isinstance(listed, str):
            try:
                entries = expand_pattern(listed)
            except ValueError as e:
                raise MetadataError(f"{folder}/{DATASET_JSON}: \"shards\": {e}") from None
        elif isinstance(listed, list) and len(listed) <= MAX_SHARDS:
            entries = listed
        else:
            raise MetadataError(f"{folder}/{DATASET_JSON}: \"shards\" must be a brace pattern or a "
                                f"list of at most {MAX_SHARDS} names; rewrite it with `avsiam shard`")
        names = [_listed_shard(folder, plain_shard_name(folder, entry)) for entry in entries]
    else:
        names = [check_local_shard(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
                 if SHARD_NAME_RE.match(n) and is_regular(os.path.join(folder, n[:-4] + ".stats.json"))]
    if not names:
        raise ValueError(f"no committed shards (NAME.tar with NAME.stats.json) in {folder}; run "
                         "`avsiam shard` to finish them")
    return names


def _listed_shard(folder: str, name: str) -> str:
    try:
        return check_local_shard(os.path.join(folder, name))
    except ValueError as e:
        raise ValueError(f"{folder}/{DATASET_JSON} lists a shard it cannot use: {e}") from None


def plain_shard_name(folder: str, entry) -> str:
    """A shard name read from a file: must be a bare shard file name, never a command or a path."""
    name = entry if isinstance(entry, str) else None
    if name is None or os.path.basename(name) != name or not SHARD_NAME_RE.match(name):
        raise ValueError(f"{folder}/{DATASET_JSON} lists shard {str(entry)[:200]!r}: only plain "
                         "shard file names inside that folder are accepted (never pipe: commands "
                         "or paths)")
    return name


def count_all(urls: list[str]) -> list[int | None]:
    """count_samples of each URL, in order; many records are read by a few threads (pyarrow
    reads without the GIL: ~1 ms a record, so 2,000 shards take ~2 s on one thread). The first
    failure in URL order is raised, as a single thread would."""
    threads = min(8, len(os.sched_getaffinity(0)), len(urls) // 64)
    if threads < 2:
        return [count_samples(u) for u in urls]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(count_samples, urls))


def count_samples(url: str) -> int | None:
    """Usable samples (ok, audio and video) of a local shard from its Parquet record; None if
    unknown (pipe: URLs, shards without a record)."""
    if url.startswith("pipe:") or not url.endswith(".tar"):
        return None
    return usable_samples(url)
