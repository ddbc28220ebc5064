"""No damaged or hostile shard can crash, hang or blow up the loader (issue 15).

One test per protection, each run in pretrain, finetune and eval mode with 0 and 2 workers, under a
time limit (a hang fails it), on both ranks of a world of 2 (they must yield the same number of
batches). Memory (the sample byte budget) is measured in a child process: test_hardening_verify.py
holds that test, with verify's own. Each test fails without its protection.
"""
from __future__ import annotations

import os
import re
import shutil
import tarfile

import pytest
import torch

from hostile_shards import (DEEP_JSON, GNU_UNSAFE_KEYS, GOOD, MODES, PAX_UNSAFE_KEYS, edit_json,
                            append_member, good_split, options, prepend_member, run_every_rank,
                            set_size_field, unsafe_key_tar)
from shards import format as F
from shards import rows as rows_module
from shards.loader import make_loader

torch.set_num_threads(1)
CASES = [pytest.param(mode, workers, id=f"{mode}-{workers}w",
                      marks=[pytest.mark.multiproc] if workers else [])
         for mode in MODES for workers in (0, 2)]
pytestmark = pytest.mark.timeout(120)


def only(skipped, reason: str, eval_count: int, mode: str) -> None:
    """`reason` is the only skip; eval reads every sample once, so it counts each exactly."""
    assert set(skipped) == {reason}, skipped
    if mode == "eval":
        assert skipped[reason] == eval_count, skipped


@pytest.fixture(scope="module")
def decode_errors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode_errors")

    def damage(shard, index, members):
        if shard == len(GOOD) and index == 0:
            members[F.META_SUFFIX] = DEEP_JSON           # RecursionError in json.loads
        return members

    good_split(folder, [2], damage=damage)
    return folder


@pytest.mark.parametrize("mode,workers", CASES)
def test_any_decode_error_is_a_counted_skip(decode_errors, mode, workers, monkeypatch):
    only(run_every_rank(str(decode_errors), mode, workers), "corrupt_json", 1, mode)

    real = rows_module.decode_fbank

    def overflowing(data):                       # any other exception class a decoder may raise
        fbank = real(data)
        if float(fbank[0, 0]) == len(GOOD):      # the samples of the last shard
            raise OverflowError("a decoder failed in an unforeseen way")
        return fbank

    monkeypatch.setattr(rows_module, "decode_fbank", overflowing)
    skipped = run_every_rank(str(decode_errors), mode, workers)
    assert skipped.pop("corrupt_json") >= 1
    only(skipped, "undecodable", 1, mode)          # the other sample of that shard


# size fields that must make a shard unreadable: negative (the scanner went back and looped), a
# sign, an underscore (int() takes both), a non-octal digit, past the end of the file, negative
# base-256. Each is the header of a member no mode reads (the scanner only skips past it),
# before the shard's one sample.
SIZE_FIELDS = [b"-0000001000\0", b"+0000001000\0", b"0000001_000\0", b"00000001800\0",
               b"77777777777\0", b"\xff" * 12]


@pytest.fixture(scope="module")
def size_fields(tmp_path_factory):
    folder = tmp_path_factory.mktemp("size_fields")
    tars = good_split(folder, [1] * (len(SIZE_FIELDS) + 1))
    for tar, field in zip(tars[len(GOOD):], SIZE_FIELDS):
        prepend_member(tar, "README.txt", b"not a format member")
        set_size_field(tar, field)
    # the first shard: its samples, then a negative size: nothing is lost, nothing skipped
    at = append_member(tars[0], "README.txt", b"not a format member")
    set_size_field(tars[0], SIZE_FIELDS[0], at)
    return folder


@pytest.mark.parametrize("mode,workers", CASES)
def test_tar_size_fields_are_checked_strictly(size_fields, mode, workers):
    only(run_every_rank(str(size_fields), mode, workers), "unreadable_shard", len(SIZE_FIELDS),
         mode)
    if mode == "eval":         # every sample the records list is evaluated (batches of 1: no
        #                        padding a stray error item could take instead of a sample)
        loader = make_loader(str(size_fields), **options(mode, workers, batch_size=1))
        assert sum(int(b["valid"].sum()) for b in loader) == sum(GOOD) + 1
    if mode != "eval":                            # the same scanner reads pipe: streams
        hostile = [f"pipe:cat {size_fields / F.shard_stem('train', len(GOOD) + i)}.tar"
                   for i in range(len(SIZE_FIELDS))]
        good = [str(size_fields / f"{F.shard_stem('train', i)}.tar") for i in range(len(GOOD))]
        skipped = run_every_rank(good + hostile, mode, workers, allow_pipe=True,
                                 samples_per_epoch=12)
        assert set(skipped) == {"unreadable_shard"}


@pytest.mark.parametrize("mode,workers", CASES)
def test_only_regular_files_are_opened(tmp_path, mode, workers):
    def fifo_instead_of(name: str) -> str:
        folder = tmp_path / name.replace(".", "_")
        good_split(folder, [2])
        os.unlink(folder / name)
        os.mkfifo(folder / name)
        return str(folder)

    for name, says in (("train-000004.tar", "shard .*train-000004.tar is a FIFO"),
                       ("train-000004.parquet", "train-000004.parquet is a FIFO"),
                       (F.DATASET_JSON, "dataset.json is a FIFO")):
        with pytest.raises(ValueError, match=says):
            make_loader(fifo_instead_of(name), **options(mode, workers))
    # a FIFO as the commit marker: that shard is not committed, the others are read
    good_only = tmp_path / "good"
    good_split(good_only)
    assert len(make_loader(fifo_instead_of("train-000004.stats.json"), **options(mode, 0))) == \
        len(make_loader(str(good_only), **options(mode, 0)))
    # swapped in after the loader was made: a FIFO and a device are unreadable shards
    folder = tmp_path / "swapped"
    good_split(folder, [2, 2])
    loader = make_loader(str(folder), **options(mode, workers))
    os.unlink(folder / "train-000004.tar")
    os.mkfifo(folder / "train-000004.tar")
    os.unlink(folder / "train-000005.tar")
    os.symlink("/dev/zero", folder / "train-000005.tar")
    batches = list(loader)
    assert len(batches) == len(loader)
    only(loader.skipped_by_reason, "unreadable_shard", 2, mode)


@pytest.mark.parametrize("mode,workers", CASES)
def test_unsafe_keys_are_counted_skips(tmp_path, mode, workers):
    tars = good_split(tmp_path, [len(GNU_UNSAFE_KEYS), len(PAX_UNSAFE_KEYS)])
    unsafe_key_tar(tars[-2], len(GOOD), GNU_UNSAFE_KEYS, tarfile.GNU_FORMAT)
    unsafe_key_tar(tars[-1], len(GOOD) + 1, PAX_UNSAFE_KEYS, tarfile.PAX_FORMAT)
    skipped = run_every_rank(str(tmp_path), mode, workers)
    only(skipped, "unsafe_key", len(GNU_UNSAFE_KEYS) + len(PAX_UNSAFE_KEYS), mode)


def dataset_with(folder, **fields) -> str:
    good_split(folder, dataset_json=fields)
    return str(folder)


# dataset.json contents a loader must refuse, naming the file and the field
REFUSED_DATASET_JSON = [
    (dict(fbank_stats={"mean": -5.0, "std": float("nan")}), "fbank_stats.std is nan"),
    (dict(fbank_stats={"mean": -5.0, "std": 1e-30}), "fbank_stats.std is 1e-30"),
    (dict(fbank_stats={"mean": float("inf"), "std": 4.0}), "fbank_stats.mean is inf"),
    (dict(fbank_stats={"mean": "-5", "std": 4.0}), "fbank_stats.mean is '-5'"),
    (dict(fbank_stats=[1, 2]), "fbank_stats is \\[1, 2\\], expected an object"),
    (dict(params={"frame_size": 4096, "num_frames": 3}), "params.frame_size is 4096"),
    (dict(params={"frame_size": "8", "num_frames": 3}), "params.frame_size is '8'"),
    (dict(params={"frame_size": 8, "num_frames": 10 ** 6}), "params.num_frames is 1000000"),
    (dict(shards="train-{000000..999999}{0..9999}.tar"), "stands for up to 10000000000 names"),
    (dict(shards=["../elsewhere/train-000000.tar"]), "only plain shard file names"),
    (dict(shards=["train-000007.tar"]), "shard .*train-000007.tar does not exist"),
]


@pytest.mark.parametrize("mode,workers", CASES)
def test_metadata_is_validated(tmp_path, mode, workers):
    # the dataset's fbank statistics are read (and checked) when the loader normalises with them
    defaults = {**{k: v for k, v in options(mode, workers).items() if k != "image_size"},
                "normalization": "dataset"}
    for i, (fields, says) in enumerate(REFUSED_DATASET_JSON):
        with pytest.raises(ValueError, match=says) as refused:
            make_loader(dataset_with(tmp_path / str(i), **fields), **defaults)
        assert f"{tmp_path / str(i)}/dataset.json" in str(refused.value)
    # num_classes is read by fine-tuning only (evaluation takes it from the model)
    huge = dataset_with(tmp_path / "classes", labels={"num_classes": 30_000_000})
    no_classes = {k: v for k, v in options(mode, workers).items() if k != "num_classes"}
    if mode == "finetune":
        with pytest.raises(ValueError, match="labels.num_classes is 30000000"):
            make_loader(huge, **no_classes)
    else:
        batch = next(iter(make_loader(huge, **no_classes)))
        assert isinstance(batch["labels"], list)
    # an explicit option replaces the field: frame_size is not looked at when image_size is given
    assert len(make_loader(dataset_with(tmp_path / "big", params={"frame_size": 4096}),
                           **options(mode, workers)))
    # counts come from the records: a stats file's counts never set the epoch
    lying = tmp_path / "lying"
    good_split(lying, [2])
    edit_json(lying / "train-000000.stats.json", ok=2_000_000, with_audio=2_000_000,
              with_video=2_000_000)
    edit_json(lying / "train-000001.stats.json", ok=float("inf"), rows="x")
    honest = tmp_path / "honest"
    good_split(honest, [2])
    assert len(make_loader(str(lying), **options(mode, workers))) == \
        len(make_loader(str(honest), **options(mode, workers)))
    run_every_rank(str(lying), mode, workers)
    # a record listing more samples than its tar can hold is refused, named
    shutil.copy(lying / "train-000002.parquet", lying / "train-000004.parquet")
    with open(lying / "train-000004.tar", "r+b") as f:
        f.truncate(2048)
    with pytest.raises(ValueError, match="train-000004.parquet lists 3 usable samples but .* can "
                                         "hold at most 0"):
        make_loader(str(lying), **options(mode, workers))


@pytest.mark.parametrize("mode,workers", CASES)
def test_make_loader_checks_its_inputs_first(tmp_path, mode, workers):
    def refused(urls, says: str) -> None:
        with pytest.raises(ValueError, match=says):
            make_loader(urls, **options(mode, workers))

    refused("/nonexistent", "no such shard folder or file: /nonexistent")
    refused(str(tmp_path), "no committed shards .* in " + re.escape(str(tmp_path)))
    tars = good_split(tmp_path / "d")
    missing = str(tmp_path / "d" / "train-000009.tar")
    refused([str(t) for t in tars] + [missing], f"shard {re.escape(missing)} does not exist")
    refused(str(tmp_path / "d" / "train-{000000..000009}.tar"), "shard .*train-000004.tar does "
                                                                  "not exist")
    refused(str(tmp_path / "t{a..z}{0..9999}-{000000..999999}.tar"),
            "stands for up to 260000000000 names")
    os.unlink(tmp_path / "d" / "train-000003.parquet")
    says = ("samples per epoch is unknown: .*train-000003.tar has no .parquet record" if mode != "eval"
            else "train-000003.tar has none")
    refused(str(tmp_path / "d"), says)
