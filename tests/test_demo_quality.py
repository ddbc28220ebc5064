"""The demo's promise: `make demo`'s own stages (synthesise -> shard -> pretrain tiny -> retrieval
on held-out clips -> fine-tune tiny -> classification on held-out clips -> embeddings and plots),
every stage the `avsiam` command a user types. Held-out audio->visual class-level R@1 must reach
0.8 (chance about 1/classes) and audio-visual mAP 0.9."""
import json

import pytest

from cluster import demo as demo_stages

pytestmark = pytest.mark.e2e

MIN_A2V_CLASS_R1 = 0.8
MIN_AV_MAP = 0.9


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The stages of `make demo` themselves (cluster/demo.py: the same recipe, the same commands),
    into a temporary folder; each stage's child process uses the machine's two cores."""
    cfg = demo_stages.DemoConfig(out=tmp_path_factory.mktemp("demo"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "2")
        shards = demo_stages.shard(cfg, demo_stages.synthesise(cfg))
        run = demo_stages.learn(cfg, shards)
    held_out = shards[demo_stages.SPLITS[1][0]]
    return {"retrieval": json.loads((run["results"] / "retrieval.json").read_text()),
            "classify": json.loads((run["results"] / "classify.json").read_text()),
            "classes": cfg.classes, "test_keys": _keys(held_out), "train_keys": _keys(shards["train"]),
            "tsne": cfg.out / "tsne.png",
            "losses": demo_stages.last_losses(run["pretrain"] / "metrics.jsonl")}


def _keys(folder) -> set[str]:
    import pyarrow.parquet as pq
    keys = set()
    for record in folder.glob("*-*.parquet"):
        keys.update(pq.read_table(record, columns=["key"]).column("key").to_pylist())
    return keys


def test_evaluation_clips_are_held_out(demo):
    assert demo["test_keys"] and not demo["test_keys"] & demo["train_keys"]
    assert demo["classify"]["num_clips"] == len(demo["test_keys"])
    assert demo["tsne"].stat().st_size > 0


def test_pretrained_audio_retrieves_visuals_of_its_class(demo):
    ret = demo["retrieval"]
    assert ret["num_classes"] == demo["classes"]
    assert ret["chance_class_r1"] < 0.5
    assert ret["summary"]["retrieval_a2v_class_r1"] >= MIN_A2V_CLASS_R1, ret["results"]


def test_pretraining_logged_both_avsiam_losses(demo):
    assert demo["losses"]["loss/contrastive"] > 0 and demo["losses"]["loss/reconstruction"] > 0


def test_finetuned_audio_visual_map(demo):
    summary = demo["classify"]["summary"]
    assert summary["av_map"] >= MIN_AV_MAP, summary
