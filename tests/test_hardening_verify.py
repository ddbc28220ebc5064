"""`avsiam verify` never crashes, hangs or blows up on hostile shards, and the sample byte budget
bounds the memory of the loader (every mode, 0 and 2 workers) and of verify (1 and 2 workers),
measured as a child process's peak RSS (issue 15). Each test fails without its protection."""
from __future__ import annotations

import json
import os
import tarfile

import pytest

from hostile_shards import (DEEP_JSON, GNU_UNSAFE_KEYS, GOOD, MODES, edit_json, good_split,
                            npy_claiming, prepend_member, run_child, set_size_field,
                            sparse_sample_tar, unsafe_key_tar)
from shards import format as F
from shards.verify import verify_dataset
from test_loader_shards import sample_key

pytestmark = pytest.mark.timeout(300)
FRAME_BYTES = 240 << 20          # each of the 3 frames of one sample claims 240 MiB (sparse)
RSS_BOUND = 96 << 20             # the most a loader or verify may grow while meeting it


def member_json(meta_change: dict):
    def damage(members):
        meta = json.loads(members[F.META_SUFFIX])
        meta.update(meta_change)
        members[F.META_SUFFIX] = json.dumps(meta).encode()
        return members
    return damage


# shard index -> (what is hostile in it, the texts its problem holds); shards 0..3 are good
HOSTILE = {
    4: ("json nested past the recursion limit", ["json missing or invalid (RecursionError"]),
    5: (".npy header claiming 10^12 elements", ["fbank does not decode: fbank.npy is shorter than "
                                                 "its header says"]),
    6: ("json claiming 10^12 frames", ["json fields ['num_frames'] have wrong types or values"]),
    7: ("stats.json ok: Infinity", ["stats file says ok=inf"]),
    8: ("negative tar size field", ["tar unreadable after 0 samples: ReadError: invalid number"]),
    9: ("keys escaping the folder", ["unsafe or malformed member '../../evil.fbank.npy'"]),
    10: ("a symlink member", ["unsafe or malformed member 'link' (tar type '2'"]),
    11: ("a FIFO as the tar", ["tar train-000011.tar is missing or not a regular file"]),
    12: ("a FIFO as the stats file", ["stats file unreadable:", "stats.json is a FIFO"]),
    13: ("a FIFO as the record", ["record train-000013.parquet unreadable:", "is a FIFO"]),
}


@pytest.fixture(scope="module")
def hostile_split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify_hostile")

    def damage(shard, index, members):
        if shard == 4:
            members[F.META_SUFFIX] = DEEP_JSON
        if shard == 5:
            members[F.FBANK_SUFFIX] = npy_claiming((7_812_500_000, 128))
        if shard == 6:
            members = member_json({"num_frames": 10 ** 12})(members)
        return members

    tars = good_split(folder, [1] * len(HOSTILE), damage=damage)
    edit_json(folder / "train-000007.stats.json", ok=float("inf"))
    set_size_field(tars[8], b"-0000001000\0")
    unsafe_key_tar(tars[9], 9, GNU_UNSAFE_KEYS[:1], tarfile.GNU_FORMAT)
    prepend_member(tars[10], "link", b"/etc/passwd", tarfile.SYMTYPE)
    for name in ("train-000011.tar", "train-000012.stats.json", "train-000013.parquet"):
        os.unlink(folder / name)
        os.mkfifo(folder / name)
    edit_json(folder / F.DATASET_JSON, shards=["../elsewhere/train-000000.tar"])
    return folder


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.multiproc)])
def test_verify_reports_hostile_shards_without_crashing(hostile_split, workers):
    report = verify_dataset(hostile_split, workers=workers)
    problems = [str(p) for p in report.problems]
    for shard, (what, says) in HOSTILE.items():
        stem = F.shard_stem("train", shard)
        assert any(p.startswith(stem) and all(text in p for text in says) for p in problems), \
            (what, problems)
    assert any(p.startswith("dataset.json: ") and "only plain shard file names" in p
               for p in problems)
    for shard in range(len(GOOD)):                # the good shards: only the fixture's thin stats
        stem = F.shard_stem("train", shard)
        assert all(": stats file " in p for p in problems if p.startswith(stem + ":")), problems


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """One child process: the loader over a split with one sample of 3 x 240 MiB frames, in every
    mode with 0 and 2 workers, then verify with 1 and 2 workers; peak RSS after each."""
    good = tmp_path_factory.mktemp("budget_good")
    good_split(good)
    hostile = tmp_path_factory.mktemp("budget_hostile")
    tars = good_split(hostile, [1])
    sparse_sample_tar(tars[-1], len(GOOD), FRAME_BYTES)
    code = f"""
import json, resource
import torch
torch.set_num_threads(1)
from hostile_shards import MODES, options, reaching_options
from shards.loader import make_loader
from shards.verify import verify_dataset

def peak():
    usage = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF,
                                                           resource.RUSAGE_CHILDREN)]
    return max(usage) * 1024

for mode in MODES:                       # warm up: imports, first decodes, worker start-up
    list(make_loader({str(good)!r}, **options(mode, 2)))
verify_dataset({str(good)!r}, workers=2)
out = {{"base": peak(), "loader": {{}}, "verify": {{}}}}
for mode in MODES:
    for workers in (0, 2):
        loader = make_loader({str(hostile)!r}, **reaching_options({str(hostile)!r}, mode, workers))
        batches = sum(1 for _ in loader)
        out["loader"][f"{{mode}}-{{workers}}"] = dict(peak=peak(), batches=batches, len=len(loader),
                                                     skipped=loader.skipped_by_reason)
for workers in (1, 2):
    report = verify_dataset({str(hostile)!r}, workers=workers)
    out["verify"][str(workers)] = dict(peak=peak(), problems=[str(p) for p in report.problems])
print(json.dumps(out))
"""
    return run_child(code, timeout=280)


@pytest.mark.parametrize("case", [f"{m}-{w}" for m in MODES for w in (0, 2)])
def test_loader_memory_is_bounded_by_the_sample_budget(budget_run, case):
    result = budget_run["loader"][case]
    grown = result["peak"] - budget_run["base"]
    assert grown < RSS_BOUND, f"{case}: peak RSS grew by {grown / 2**20:.0f} MiB"
    assert result["batches"] == result["len"]
    assert set(result["skipped"]) == {"oversized_sample"}, result["skipped"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_verify_memory_is_bounded_by_the_sample_budget(budget_run, workers):
    result = budget_run["verify"][workers]
    grown = result["peak"] - budget_run["base"]
    assert grown < RSS_BOUND, f"verify --workers {workers}: peak RSS grew by {grown / 2**20:.0f} MiB"
    key = sample_key(len(GOOD), 0)
    assert any(f"[{key}]: its members claim more than {F.MAX_SAMPLE_BYTES} bytes" in p
               for p in result["problems"]), result["problems"]
