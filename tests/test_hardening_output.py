"""What a user can get wrong around `avsiam shard` ends in one line naming the file and the fix
(exit 2), never a traceback, and commits nothing half-written: a disk that fills up (in a tar, in
dataset.json; re-run after freeing space gives the same bytes), an --out that is a file or
read-only, a manifest that is not UTF-8 or is a folder, Parquet columns of the wrong type; and
--max-shard-bytes is a true cap, tested with noise frames at JPEG quality 100."""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.cli import main as cli
from shards import format as fmt
from fixtures import make_clip

pytestmark = [pytest.mark.multiproc, pytest.mark.e2e]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("output")
    for i in range(6):
        make_clip(root / "videos" / f"c{i}.mp4", seconds=1.0)
    (root / "m.csv").write_text("id,path\n" + "".join(f"c{i},c{i}.mp4\n" for i in range(6)))
    return root


def _args(media: Path, out: Path, *extra: str, manifest: Path | None = None) -> list[str]:
    return ["shard", "--manifest", str(manifest or media / "m.csv"), "--videos",
            str(media / "videos"), "--out", str(out), "--workers", "1", "--no-progress",
            "--frame-size", "64", "--num-frames", "4", "--samples-per-shard", "2", *extra]


def _folder(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _one_line_error(capsys, *needles: str) -> str:
    """The command's stderr ends in one `avsiam shard:` line holding every needle, without a
    traceback; returns that line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("avsiam shard: "), err
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def reference(media, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    assert cli(_args(media, out)) == 0
    return _folder(out)


def _mount_tmpfs(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); "
                    f"the full-disk and read-only tests need root and mount permission")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=2m,mode=0755")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int = 0) -> Path:
    """A ballast file that leaves about `leave` bytes free (0: write until the disk is full)."""
    import os

    ballast = disk / "ballast"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(ballast, "wb", buffering=0) as handle:
        if leave:
            handle.write(b"\0" * max(free - leave, 0))
        else:
            try:
                while handle.write(b"\0" * 4096):
                    pass
            except OSError:
                pass
    return ballast


def test_a_full_disk_in_a_tar_then_a_rerun_after_freeing_space(media, reference, small_disk,
                                                                capsys):
    out = small_disk / "out"
    ballast = _fill(small_disk, leave=len(reference[fmt.MANIFEST_NAME]) + 64 * 1024)
    assert cli(_args(media, out)) == 2
    _one_line_error(capsys, f"cannot write {out / 'train-000000.tar'} (No space left on device)",
                    "free space on its filesystem", "run the same command again")
    assert not [p for p in out.iterdir() if ".tmp" in p.name]      # its temp tar is gone
    assert not (out / "train-000000.stats.json").exists()
    ballast.unlink()
    assert cli(_args(media, out)) == 0
    assert _folder(out) == reference


def test_a_full_disk_in_dataset_json_then_a_rerun_after_freeing_space(media, reference,
                                                                       small_disk, capsys):
    out = small_disk / "out"
    assert cli(_args(media, out)) == 0
    (out / fmt.DATASET_JSON).unlink()
    ballast = _fill(small_disk)
    capsys.readouterr()
    assert cli(_args(media, out)) == 2
    _one_line_error(capsys, f"cannot write {out / fmt.DATASET_JSON} (No space left on device)")
    assert not (out / fmt.DATASET_JSON).exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    ballast.unlink()
    assert cli(_args(media, out)) == 0
    assert _folder(out) == reference


def test_out_that_is_a_file_or_read_only(media, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli(_args(media, tmp_path / "file")) == 2
    _one_line_error(capsys, f"{tmp_path / 'file'}: --out is a file, not a folder; pass a folder")
    assert cli(_args(media, tmp_path / "file" / "sub")) == 2
    _one_line_error(capsys, f"cannot write {tmp_path / 'file' / 'sub'}")
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "ro,size=1m")
    try:
        for out in (disk, disk / "sub"):
            assert cli(_args(media, out)) == 2
            _one_line_error(capsys, f"cannot write {out} (Read-only file system)",
                            "pass a writable --out")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_manifest_that_is_not_utf8_a_folder_or_missing(media, tmp_path, capsys):
    latin = tmp_path / "segments.csv"
    latin.write_bytes(b"# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n"
                      b'c0, 0.000, 1.000, "caf\xe9"\n')
    assert cli(_args(media, tmp_path / "o1", manifest=latin)) == 2
    _one_line_error(capsys, f"--manifest {latin} is not UTF-8 text (line 4, byte 82: b'\\xe9\"\\n'",
                    "save it as UTF-8")
    generic = tmp_path / "m.csv"
    generic.write_bytes(b"id,path\nc\xff0,c0.mp4\n")
    assert cli(_args(media, tmp_path / "o2", manifest=generic)) == 2
    _one_line_error(capsys, f"--manifest {generic} is not UTF-8 text (line 2")
    assert cli(_args(media, tmp_path / "o3", manifest=media / "videos")) == 2
    _one_line_error(capsys, f"--manifest {media / 'videos'} is a folder; pass the file itself",
                    "omit --manifest")
    assert cli(_args(media, tmp_path / "o4", manifest=tmp_path / "nope.csv")) == 2
    _one_line_error(capsys, f"--manifest {tmp_path / 'nope.csv'}: No such file or directory")
    assert cli(_args(media, tmp_path / "o5", "--labels", str(tmp_path))) == 2
    _one_line_error(capsys, f"--labels {tmp_path} is a folder")


@pytest.mark.parametrize("columns, refused", [
    ({"id": ["c0", "c1"], "path": ["c0.mp4", "c1.mp4"], "start": [True, False]}, "'start' has "
     "type bool; it must be a number of seconds"),
    ({"id": [1.0, float("nan")], "path": ["c0.mp4", "c1.mp4"]}, "'id' has type double; it must "
     "be a string or integer"),
    ({"id": ["c0", "c1"], "labels": [1.5, 2.5]}, "'labels' has type double"),
])
def test_parquet_columns_of_the_wrong_type_are_refused(media, tmp_path, capsys, columns, refused):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table(columns), manifest)
    assert cli(_args(media, tmp_path / "out", manifest=manifest)) == 2
    _one_line_error(capsys, f"{manifest}: column {refused}")


def test_max_shard_bytes_is_a_true_cap_with_noise_at_quality_100(tmp_path, capsys):
    """256-px noise frames at quality 100: a cap below one sample's true bound is refused in one
    line that names the bound; with that bound as the cap every tar fits."""
    for i in range(3):
        make_clip(tmp_path / "videos" / f"n{i}.mp4", seconds=1.0, extra=("-qp", "0"),
                  video_source=f"nullsrc=s=256x256:r=25,geq=lum='random({i + 1})*255':"
                               f"cb='random({i + 7})*255':cr='random({i + 13})*255'")
    (tmp_path / "m.csv").write_text("id,path\n" + "".join(f"n{i},n{i}.mp4\n" for i in range(3)))

    def args(cap: int) -> list[str]:
        return ["shard", "--manifest", str(tmp_path / "m.csv"), "--videos",
                str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--workers", "1",
                "--no-progress", "--frame-size", "256", "--num-frames", "10", "--jpeg-quality",
                "100", "--max-shard-bytes", str(cap)]

    assert cli(args(1 << 20)) == 2
    line = _one_line_error(capsys, "--max-shard-bytes 1048576 is below what one sample can take",
                           "--frame-size 256, --num-frames 10")
    bound = int(line.split("raise --max-shard-bytes to at least ")[1].split()[0])
    assert cli(args(bound)) == 0
    tars = sorted((tmp_path / "out").glob("*.tar"))
    assert len(tars) == 3
    for tar in tars:
        assert tar.stat().st_size <= bound
        with tarfile.open(tar) as archive:
            jpegs = [archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")]
        assert len(jpegs) == 10 and all(len(j) > 0.5 * 256 * 256 * 3 for j in jpegs)  # noise


def test_a_jpeg_never_exceeds_its_budget(monkeypatch):
    from pipeline import frames

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8).tobytes()
    full = frames.encode_jpeg(noise, 64, 100)
    assert len(full) <= frames.jpeg_budget(64)
    monkeypatch.setattr(frames, "jpeg_budget", lambda size: len(full) // 2)   # as if over budget
    smaller = frames.encode_jpeg(noise, 64, 100)
    assert len(smaller) <= len(full) // 2 and smaller == frames.encode_jpeg(noise, 64, 100)
    assert Image.open(io.BytesIO(smaller)).size == (64, 64)
