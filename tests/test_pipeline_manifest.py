"""Manifest readers, label vocabularies, the plan (keys, shards, candidates) and task selection."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, resolve_task
from pipeline.labels import LabelsError, read_labels, vocabulary_from
from pipeline.manifest import ManifestError, choose_split, detect_kind, read_manifest
from pipeline.params import ClipParams, ParamsError, params_hash
from pipeline.plan import (DEFAULT_EXTENSIONS, SHARD_TAIL_BYTES, PlanMismatch, PlanParams,
                           build_plan, candidates, load_or_write, read_plan, render_template,
                           sample_bytes_bound, unique_keys, worst_case_bytes)
from shards import format as fmt

AUDIOSET = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw"
abc, 0.000, 7.500, "/m/09x0r"
abc, 0.000, 7.500, "/m/03v3yw,/m/09x0r"
"""
LABELS = """index,mid,display_name
0,/m/09x0r,"Speech"
1,/t/dd00088,"Gush"
2,/m/03v3yw,"Keys jangling"
"""
VGGSOUND = """---g-f_I2yQ,1,"people marching, outdoors",test
--0PQM4-hqg,30,waterfall burbling,train
--56QUhyDQM,185,"people marching, outdoors",train
"""


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "seg.csv").write_text(AUDIOSET)
    (tmp_path / "labels.csv").write_text(LABELS)
    (tmp_path / "vgg.csv").write_text(VGGSOUND)
    return tmp_path


def test_audioset_csv_comments_quotes_and_dash_ids(files):
    m = read_manifest(files / "seg.csv")
    assert m.kind == "audioset" and len(m) == 4
    assert m.source_ids[:2] == ["--PJHxphWEs", "-0RWZT-miFs"]
    assert m.starts[0] == 30.0 and m.ends[0] == 40.0 and m.ends[2] == 7.5
    assert m.labels[0] == ("/m/09x0r", "/t/dd00088")


def test_vggsound_csv_commas_in_labels_window_and_split(files):
    assert detect_kind(files / "vgg.csv") == "vggsound"
    m = read_manifest(files / "vgg.csv")
    assert m.labels[0] == ("people marching, outdoors",)
    assert (m.starts[2], m.ends[2]) == (185.0, 195.0)
    train = m.select_split("train")
    assert train.source_ids == ["--0PQM4-hqg", "--56QUhyDQM"]


def test_headerless_audioset_csv_is_recognised_not_taken_as_a_header(files):
    rows = "".join(line + "\n" for line in AUDIOSET.splitlines() if not line.startswith("#"))
    (files / "headerless.csv").write_text(rows)
    assert detect_kind(files / "headerless.csv") == "audioset"
    m = read_manifest(files / "headerless.csv")
    assert m.kind == "audioset" and len(m) == 4 and m.source_ids[0] == "--PJHxphWEs"
    assert m.labels[1] == ("/m/03v3yw",) and (m.starts[0], m.ends[0]) == (30.0, 40.0)


@pytest.mark.parametrize("text, where, message", [
    # a quote left open swallowed the next row into the labels
    ('a, 0, 10, "/m/1\nb, 0, 10, "/m/2"\nc, 0, 10, "/m/3"\n', ":4:", "malformed row"),
    ('a, 0, 10, "/m/1\nb, 0, 10, /m/2\n', ":4:", "malformed row"),
    ('a, 0, 10, "/m/1"\nb, 0, 10, "/m/2,\n/m/3"\n', ":5:", "not closed before line 6"),
    ('a, 0, 10, "/m/1"\nb, 0, "/m/2"\n', ":5:", "expected 4 fields"),
    ('a, 0, 10, /m/1,/m/2\n', ":4:", "expected 4 fields"),
    ('a, 0, ten, "/m/1"\n', ":4:", "'ten' is not a number"),
])
def test_malformed_audioset_rows_stop_with_file_and_line(files, text, where, message):
    path = files / "bad_segments.csv"
    path.write_text("# a\n# b\n# c\n" + text)
    with pytest.raises(ManifestError, match=f"bad_segments.csv{where}.*{message}"):
        read_manifest(path)


def test_malformed_vggsound_rows_stop_with_file_and_line(files):
    (files / "bad_vgg.csv").write_text('a,1,"dogs, barking,train\nb,2,cat,test\n')
    with pytest.raises(ManifestError, match="bad_vgg.csv:1: malformed row"):
        read_manifest(files / "bad_vgg.csv", "vggsound")
    (files / "bad_vgg.csv").write_text('a,1,dogs, barking,train\n')
    with pytest.raises(ManifestError, match="bad_vgg.csv:1: expected 4 fields"):
        read_manifest(files / "bad_vgg.csv", "vggsound")


def test_vggsound_needs_a_split_choice(files):
    m = read_manifest(files / "vgg.csv")
    with pytest.raises(ManifestError, match="holds test and train rows: pass --select-split test "
                       "or --select-split train .*--select-split all"):
        choose_split(m, None, files / "vgg.csv")
    assert choose_split(m, "all", "v").source_ids == m.source_ids
    assert choose_split(m, "test", "v").source_ids == ["---g-f_I2yQ"]
    with pytest.raises(ManifestError, match="has no 'val' rows .*test, train"):
        choose_split(m, "val", "v")
    one = m.select_split("train")
    assert choose_split(one, None, "v") is one          # nothing to mix
    audioset = read_manifest(files / "seg.csv")
    with pytest.raises(ManifestError, match="has no split column"):
        choose_split(audioset, "train", "seg.csv")


def test_generic_csv_and_parquet(files):
    (files / "gen.csv").write_text("path,start,end,labels\na/x.mp4,1.5,3,\"dog,cat\"\nb.mkv,,,\n")
    m = read_manifest(files / "gen.csv")
    assert m.kind == "csv" and m.source_ids == ["a/x", "b"] and m.paths == ["a/x.mp4", "b.mkv"]
    assert m.starts == [1.5, None] and m.labels == [("dog", "cat"), ()]
    pq.write_table(pa.table({"ytid": ["q"], "start_seconds": [2.0], "labels": [["m1", "m2"]]}),
                   files / "gen.parquet")
    p = read_manifest(files / "gen.parquet")
    assert p.kind == "parquet" and p.source_ids == ["q"] and p.labels == [("m1", "m2")]
    (files / "bad.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ManifestError, match="id column"):
        read_manifest(files / "bad.csv")
    (files / "badnum.csv").write_text("id,start\nx,abc\n")
    with pytest.raises(ManifestError, match="badnum.csv row 1.*not a number"):
        read_manifest(files / "badnum.csv")


def test_folder_manifest_sorted_and_filtered(tmp_path):
    for name in ("b/z.mp4", "a.webm", "notes.txt", "b/a.MKV"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    m = read_manifest(None, videos=tmp_path, extensions=("mp4", "webm", "mkv"))
    assert m.kind == "folder" and m.paths == ["a.webm", "b/a.MKV", "b/z.mp4"]
    assert m.source_ids == ["a", "b/a", "b/z"] and m.starts == [None] * 3


def test_labels_file_and_unknown_label_error(files):
    vocab = read_labels(files / "labels.csv")
    assert vocab.ids == ("/m/09x0r", "/t/dd00088", "/m/03v3yw")
    assert vocab.names[2] == "Keys jangling"
    (files / "labels.txt").write_text("b\na\n")
    assert read_labels(files / "labels.txt").ids == ("b", "a")
    assert vocabulary_from([("b",), ("a", "b")]).ids == ("a", "b")
    (files / "dup.txt").write_text("a\na\n")
    with pytest.raises(LabelsError, match="twice"):
        read_labels(files / "dup.txt")
    m = read_manifest(files / "seg.csv")
    small = vocabulary_from([("/m/09x0r",)])
    with pytest.raises(ManifestError, match="not in manifest.*--labels"):
        build_plan(m, small, PlanParams(), ClipParams(), "h")


def _smallest_free_suffix_keys(source_ids, starts):
    """The rule unique_keys implements, written the slow, obvious way."""
    keys = [fmt.sample_key(s, t) for s, t in zip(source_ids, starts)]
    taken, seen, out = set(keys), set(), []
    for key in keys:
        if key in seen:
            key = next(f"{key}-{n}" for n in range(1, len(keys) + 2) if f"{key}-{n}" not in taken)
            taken.add(key)
        seen.add(key)
        out.append(key)
    return out


def test_unique_keys_give_the_smallest_free_suffix_in_row_order():
    """Literal ids that look like suffixed keys ('a-2') take their names first; the linear
    search hands out the same keys as the obvious rule, whatever the order."""
    import random

    pool = ["a", "a-1", "a-3", "b", "a-1-1", "b-1"]
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 30))]
        starts = [None] * len(ids)
        assert unique_keys(ids, starts) == _smallest_free_suffix_keys(ids, starts)
    assert unique_keys(["a", "a", "a-1", "a"], [None] * 4) == ["a", "a-2", "a-1", "a-3"]
    many = unique_keys(["x"] * 20_000, [0.0] * 20_000)
    assert many[-1] == "x_00000000-19999" and len(set(many)) == 20_000


def test_unique_keys_are_safe_and_deterministic():
    keys = unique_keys(["abc", "abc", "abc", "../../evil", "x\x07\ny"], [0.0, 0.0, 0.0, None, 1.5])
    assert keys[:3] == ["abc_00000000", "abc_00000000-1", "abc_00000000-2"]
    assert keys[3] == "______evil" and keys[4] == "x__y_00001500"
    assert all(fmt.is_safe_key(k) for k in keys)


def test_plan_rows_keys_labels_and_shards(files):
    m = read_manifest(files / "seg.csv")
    vocab = read_labels(files / "labels.csv")
    plan = build_plan(m, vocab, PlanParams(samples_per_shard=3), ClipParams(), "h")
    rows = plan.table.to_pylist()
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert [r["shard"] for r in rows] == [0, 0, 0, 1] and plan.num_shards == 2
    assert rows[3]["key"] == "abc_00000000-1" and rows[3]["label_indices"] == [2, 0]
    assert [t.row for t in plan.tasks(1)] == [3]
    assert plan.tasks(0)[0].candidates[:2] == ("--PJHxphWEs", "--PJHxphWEs.mp4")


def test_plan_byte_cap_closes_shards_early(files):
    m = read_manifest(files / "seg.csv")
    params = ClipParams(frame_size=224)
    plan = build_plan(m, read_labels(files / "labels.csv"), PlanParams(), params, "h")
    per_row = max(sample_bytes_bound(worst_case_bytes(10.0, params), params, r["key"],
                                     r["source_id"], r["path"], r["labels"], DEFAULT_EXTENSIONS)
                  for r in plan.table.to_pylist())
    plan = build_plan(m, read_labels(files / "labels.csv"),
                      PlanParams(samples_per_shard=1000,
                                 max_shard_bytes=2 * per_row + SHARD_TAIL_BYTES),
                      params, "h")
    assert plan.table.column("shard").to_pylist() == [0, 0, 1, 1]
    with pytest.raises(ParamsError, match="raise --max-shard-bytes to at least"):
        build_plan(m, read_labels(files / "labels.csv"),
                   PlanParams(max_shard_bytes=per_row + SHARD_TAIL_BYTES - 4096), params, "h")


def test_templates_and_candidates():
    assert render_template("{ytid}_{start:06d}.mp4", "abc", 30.0, 40.0) == "abc_000030.mp4"
    assert render_template("{id}-{start_ms}", "abc", 1.25, None) == "abc-1250"
    with pytest.raises(ManifestError, match="does not fit"):
        render_template("{ytid}_{start:06d}", "abc", 1.5, None)
    assert candidates("abc.mp4", ("mp4", "mkv")) == ("abc.mp4", "abc.mkv")
    assert candidates("abc.mkv", ("mp4", "mkv")) == ("abc.mkv", "abc.mp4")
    assert candidates("a.b", ("mp4",)) == ("a.b", "a.b.mp4")


def test_stored_plan_is_reused_and_mismatch_is_refused(files):
    m = read_manifest(files / "seg.csv")
    vocab = read_labels(files / "labels.csv")
    clip = ClipParams()
    plan = build_plan(m, vocab, PlanParams(), clip, params_hash(clip.as_dict()))
    load_or_write(plan, files)
    again = build_plan(m, vocab, PlanParams(), clip, params_hash(clip.as_dict()))
    assert load_or_write(again, files).meta == read_plan(files).meta
    other = build_plan(m, vocab, PlanParams(samples_per_shard=2), clip, params_hash(clip.as_dict()))
    with pytest.raises(PlanMismatch, match="samples_per_shard: 1000 -> 2"):
        load_or_write(other, files)
    clip2 = ClipParams(num_frames=4)
    with pytest.raises(PlanMismatch, match="num_frames: 10 -> 4"):
        load_or_write(build_plan(m, vocab, PlanParams(), clip2, params_hash(clip2.as_dict())),
                      files)


def test_task_selection_from_flags_and_slurm_env():
    assert resolve_task(None, None, {}) == (0, 1)
    assert resolve_task(1, 3, {}) == (1, 3)
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_task(None, None, env) == (2, 4)
    assert resolve_task(0, 1, env) == (0, 1)          # flags win
    with pytest.raises(ConfigError, match="--array=0-3"):
        resolve_task(4, 4, {})
