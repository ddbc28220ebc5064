"""Test shards that follow shards/format.py exactly, for the loader tests (and a test that they do).

`write_split(folder, sizes)` writes one real tar per entry of `sizes` (real JPEG bytes from PIL, real
float16 .npy fbanks [T, 128], JSON metadata with every META_FIELDS key), its Parquet record, its
stats.json (written last) and a dataset.json. Sample contents encode their identity: fbank value
= shard + sample / 1000 in the first row, frame f{i} a flat colour 10 * i, so tests can see which
frame and which sample arrived. Hooks (`damage`, `extra_members`) write the bad cases.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from shards import format as F


def jpeg_bytes(size: int, value: int) -> bytes:
    img = np.full((size, size, 3), value, dtype=np.uint8)
    img[: size // 4, : size // 4] = 255 - value          # a corner so it is a real image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def sample_key(shard: int, index: int) -> str:
    return F.sample_key(f"clip{shard:03d}x{index:04d}", 0.0)


def fbank_for(shard: int, index: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(shard * 100003 + index)
    fb = rng.normal(-5.0, 4.0, size=(frames, F.NUM_MEL_BINS)).astype(np.float16)
    fb[0, :] = shard + index / 1000.0
    return fb


def labels_for(shard: int, index: int, num_classes: int) -> list[int]:
    first = (shard * 7 + index) % num_classes
    return [first] if index % 3 else sorted({first, (first + 1) % num_classes})


def meta_for(key: str, shard: int, index: int, *, num_frames: int, fbank_frames: int,
             num_classes: int, has_audio: bool = True, has_video: bool = True,
             label_fn=labels_for) -> dict:
    labels = label_fn(shard, index, num_classes)
    meta = {
        "key": key, "source_id": key[:-9], "path": f"videos/{key}.mp4", "start": 0.0, "end": 10.0,
        "window_source": "seek", "decoded_seconds": 10.0, "coverage": 1.0,
        "labels": [f"/m/{i:04d}" for i in labels], "label_indices": labels,
        "fps": 25.0, "duration": 10.0, "width": 320, "height": 240,
        "audio_rate": 16000, "audio_channels": 1,
        "fbank_frames": fbank_frames if has_audio else 0,
        "num_frames": num_frames if has_video else 0,
        "frame_times": [i * 10.0 / num_frames for i in range(num_frames)] if has_video else [],
        "has_audio": has_audio, "has_video": has_video,
        "format_version": F.FORMAT_VERSION, "pipeline_version": "test", "params_hash": "0" * 8,
    }
    assert set(meta) == set(F.META_FIELDS)
    return meta


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def sample_members(shard: int, index: int, *, num_frames: int, frame_size: int, fbank_frames: int,
                   num_classes: int, has_audio: bool = True, has_video: bool = True,
                   label_fn=labels_for) -> dict:
    """suffix -> bytes for one sample, in the format's member order."""
    key = sample_key(shard, index)
    members = {}
    if has_audio:
        members[F.FBANK_SUFFIX] = npy_bytes(fbank_for(shard, index, fbank_frames))
    if has_video:
        for i in range(num_frames):
            members[F.frame_suffix(i)] = jpeg_bytes(frame_size, 10 * i)
    meta = meta_for(key, shard, index, num_frames=num_frames, fbank_frames=fbank_frames,
                    num_classes=num_classes, has_audio=has_audio, has_video=has_video,
                    label_fn=label_fn)
    members[F.META_SUFFIX] = json.dumps(meta).encode()
    return members


def write_split(folder, sizes, *, split: str = "train", num_frames: int = 3, frame_size: int = 32,
                fbank_frames: int = 998, num_classes: int = 5, damage=None, extra_members=None,
                single_modality=(), dataset_json: dict | bool | None = None, first_index: int = 0,
                label_fn=labels_for) -> list[Path]:
    """Write len(sizes) shards; damage(shard, index, members) may edit/return members or None."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tars = []
    for s, size in enumerate(sizes):
        shard = first_index + s
        files = F.ShardFiles.of(folder, split, shard)
        rows = []
        with tarfile.open(files.tar, "w") as tar:
            for i in range(size):
                key = sample_key(shard, i)
                audio = (shard, i) not in single_modality
                members = sample_members(shard, i, num_frames=num_frames, frame_size=frame_size,
                                         fbank_frames=fbank_frames, num_classes=num_classes,
                                         has_audio=audio, label_fn=label_fn)
                if extra_members is not None:
                    members.update(extra_members(shard, i) or {})
                if damage is not None:
                    members = damage(shard, i, members)
                for suffix, data in (members or {}).items():
                    add_member(tar, f"{key}.{suffix}", data)
                rows.append({"row": shard * 1000 + i, "key": key, "source_id": key[:-9],
                             "path": f"videos/{key}.mp4", "status": F.STATUS_OK, "reason": None,
                             "has_audio": audio, "has_video": True, "coverage": 1.0,
                             "window_source": "seek"})
        pq.write_table(pa.Table.from_pylist(rows), files.record)
        files.stats.write_text(json.dumps({"samples": size, "written": time.time()}))
        tars.append(files.tar)
    info = {"format_version": F.FORMAT_VERSION, "fbank_stats": {"mean": -5.0, "std": 4.0},
            "params": {"frame_size": frame_size, "num_frames": num_frames}}
    info.update(dataset_json or {})
    if dataset_json is not False:
        (folder / F.DATASET_JSON).write_text(json.dumps(info))
    return tars


def test_fixture_shards_follow_the_format(tmp_path):
    """Plain webdataset reads the fixture; members, order, dtypes and metadata are the format's."""
    import webdataset as wds

    tars = write_split(tmp_path, [3, 2], num_frames=2)
    assert all(F.SHARD_NAME_RE.match(t.name) for t in tars)
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
    key = sample_key(0, 0)
    assert names[:4] == [f"{key}.{s}" for s in F.member_suffixes(2, True, True)]
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert len(samples) == 5
    fb = np.load(io.BytesIO(samples[0][F.FBANK_SUFFIX]), allow_pickle=False)
    assert fb.dtype == np.float16 and fb.shape == (998, F.NUM_MEL_BINS)
    meta = json.loads(samples[0][F.META_SUFFIX])
    assert set(meta) == set(F.META_FIELDS) and meta["key"] == samples[0]["__key__"]
    assert Image.open(io.BytesIO(samples[0]["f1.jpg"])).format == "JPEG"
    record = pq.read_table(tars[1].with_suffix(".parquet"))
    assert record.num_rows == 2 and tuple(record.column_names) == F.RECORD_COLUMNS


def test_member_names_split_exactly_like_webdataset():
    from webdataset.tariterators import base_plus_ext

    from shards.format import FRAME_SUFFIX_RE, frame_number, split_member

    names = ["a.b", "a/b.c/d.e", "a.b.c", ".x", "noext", "dir/.hidden.jpg", "x/", "k.f3.jpg",
             "k.f\u0661\u0662.jpg", "k.f.jpg", "k.f12.jpgx", "/a.b", "a/b", "ab.", "a..b",
             "k.f03.jpg", "k.f\u00b23.jpg", "d.x/.y.z", ".//.", "a/..b", "a/b/.c.d", "a.b/c/.d"]
    for name in names:
        assert split_member(name) == base_plus_ext(name), name
        suffix = split_member(name)[1]
        if suffix is not None:
            match = FRAME_SUFFIX_RE.match(suffix)
            assert frame_number(suffix) == (int(match.group("i")) if match else None), name
