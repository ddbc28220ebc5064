"""The demo's summary.json names the level of each retrieval figure and reports the last logged
pretraining losses (issue 16)."""
import json

from cluster import demo


def test_summary_keys_say_their_level_and_carry_the_last_losses(tmp_path, capsys):
    run = {name: tmp_path / name for name in ("pretrain", "finetune", "results")}
    for folder in run.values():
        folder.mkdir()
    retrieval = {"retrieval_a2v_r1": 0.25, "retrieval_v2a_r1": 0.3, "retrieval_a2v_class_r1": 1.0,
                 "retrieval_v2a_class_r1": 0.9}
    (run["results"] / "retrieval.json").write_text(json.dumps({"summary": retrieval}))
    (run["results"] / "classify.json").write_text(json.dumps({"summary": {"av_map": 0.95}}))
    records = [{"step": 10, "loss/contrastive": 2.0, "loss/reconstruction": 1.5},
               {"step": 20, "loss/contrastive": 1.0, "loss/reconstruction": 0.75}]
    (run["pretrain"] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = demo.summarise(demo.DemoConfig(out=tmp_path), run, 12.0)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert (summary["retrieval_a2v_class_r1"], summary["retrieval_a2v_instance_r1"]) == (1.0, 0.25)
    assert (summary["retrieval_v2a_class_r1"], summary["retrieval_v2a_instance_r1"]) == (0.9, 0.3)
    assert "retrieval_a2v_r1" not in summary and "retrieval_v2a_r1" not in summary
    assert summary["pretrain_loss_reconstruction"] == 0.75 and summary["pretrain_loss_contrastive"] == 1.0
    capsys.readouterr()



def test_the_demo_pretrains_with_the_avsiam_objective():
    """Reconstruction and multi-ratio masking stay on in the demo's pretraining."""
    from trainer.engine.config import load_config
    cfg = load_config("tiny_cpu", ["data.train=x", *demo.DEMO_PRETRAIN])
    assert cfg.objective.reconstruction_weight > 0 and cfg.objective.contrastive_weight > 0
    assert len(cfg.objective.mask_ratios) > 1 and max(cfg.objective.mask_ratios) > 0
