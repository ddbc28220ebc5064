"""The engine's parts that need no process group: config, DeepSpeed config, lr schedule, launcher
environment, checkpoint discovery, metrics files, stop signals, FLOPs and the pretraining module."""
from __future__ import annotations

import json
import math
import os
import re
import signal

import pytest
import torch

from trainer.engine.checkpoint import (COMPLETE, Checkpointer, complete_checkpoints, find_resume_point,
                                       open_run_checkpoints, restore_rng, capture_rng)
from trainer.engine.config import load_config, preset_names
from trainer.engine.deepspeed_config import derive_deepspeed_config
from trainer.engine.distributed import DistContext, DistEnv, detect_env, first_host, slurm_port
from trainer.engine.flops import mfu, peak_flops, train_flops_per_sample
from trainer.engine.metrics import JsonlLogger, read_jsonl
from trainer.engine.schedule import lr_at
from trainer.engine.signals import StopRequest


# --- config -------------------------------------------------------------------------------------

def test_presets_load_and_differ_where_the_paper_says():
    assert {"tiny_cpu", "avsiam_base", "avsiam_large", "avsiam_huge"} <= set(preset_names())
    base, large, huge = (load_config(n) for n in ("avsiam_base", "avsiam_large", "avsiam_huge"))
    assert base.model.size == "base" and base.optim.betas == (0.95, 0.999) and base.optim.weight_decay == 5e-7
    assert base.optim.name == "adam" and base.optim.schedule == "multistep" and base.deepspeed.precision == "bf16"
    assert len(large.objective.mask_ratios) == 8 and large.deepspeed.grad_checkpointing
    assert huge.deepspeed.zero_stage == 3 and huge.objective.contrastive_chunk == 32
    tiny = load_config("tiny_cpu")
    assert tiny.device == "cpu" and tiny.deepspeed.precision == "fp32"


def test_overrides_are_typed_and_dotted():
    cfg = load_config("tiny_cpu", ["optim.lr=3e-4", "deepspeed.zero_stage=3", "objective.mask_ratios=[0, 0.5]",
                                   "objective.contrastive_chunk=8", "data.options={noise: true}", "max_steps=7"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.deepspeed.zero_stage == 3 and cfg.objective.mask_ratios == (0.0, 0.5)
    assert cfg.objective.contrastive_chunk == 8 and cfg.data.options == {"noise": True} and cfg.max_steps == 7


def test_fbank_normalisation_is_the_papers_unless_dataset_is_chosen():
    """data.normalization reaches the loader (and the resolved config the run records); paper by default."""
    for name in ("avsiam_base", "avsiam_large", "avsiam_huge"):
        assert load_config(name).data.normalization == "paper"
    assert load_config(None).data.loader_options() == {"normalization": "paper"}
    cfg = load_config("tiny_cpu", ["data.options={noise: true}"])     # the demo: synthetic sound's own stats
    assert cfg.data.loader_options() == {"normalization": "dataset", "noise": True}
    assert cfg.to_dict()["data"]["normalization"] == "dataset"


@pytest.mark.parametrize("override,message", [
    ("data.normalization=split", "data.normalization must be one of paper, dataset"),
    ("data.options={normalization: dataset}", "data.options may not set ['normalization']"),
    ("optim.lrr=1", "unknown config key(s) ['optim.lrr']"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage must be one of 1, 2, 3"),
    ("max_steps=abc", "max_steps: expected int"),
    ("objective.schedule=both", "objective.schedule must be one of sum, alternate"),
    ("data.options={rank: 1}", "data.options may not set ['rank']"),
    ("data.options.nosie=true", "unknown config key(s) ['data.options.nosie']"),
    ("data.options.freqm=wide", "data.options.freqm: expected int"),
    ("data.options.norm_order=sideways", "data.options: norm_order must be"),
    ("deepspeed.gradient_accumulation=2", "unknown config key(s) ['deepspeed.gradient_accumulation']"),
    ("gradient_accumulation=0", "gradient_accumulation must be > 0"),
    ("optim.lr", "is not key=value"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config("tiny_cpu", [override])


def test_deepspeed_config_is_derived():
    cfg = load_config("avsiam_base", ["optim.grad_clip=1.0", "gradient_accumulation=2",
                                      "objective.schedule=sum"])
    ds = derive_deepspeed_config(cfg, world_size=16, device_type="cuda")
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"] == {"enabled": True}
    assert ds["train_micro_batch_size_per_gpu"] == 192 and ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == 192 * 16 and ds["gradient_clipping"] == 1.0
    params = ds["optimizer"]["params"]
    assert params["betas"] == [0.95, 0.999] and params["adam_w_mode"] is False and params["torch_adam"] is False
    cpu = derive_deepspeed_config(load_config("tiny_cpu", ["deepspeed.extra={wall_clock_breakdown: true}"]),
                                  world_size=2, device_type="cpu", load_universal=True)
    assert cpu["optimizer"]["params"]["torch_adam"] and cpu["optimizer"]["params"]["adam_w_mode"]
    assert "bf16" not in cpu and cpu["checkpoint"] == {"load_universal": True} and cpu["wall_clock_breakdown"]
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        derive_deepspeed_config(load_config("tiny_cpu", ["deepspeed.precision=fp16"]), 1, "cpu")
    # the official schedule's two Adam states: PhasedAdam is the client optimizer, not DeepSpeed's Adam
    official = derive_deepspeed_config(load_config("avsiam_base"), world_size=16, device_type="cuda")
    assert "optimizer" not in official and official["zero_allow_untested_optimizer"] is True
    from trainer.finetune.config import load_finetune_config       # fine-tuning: no objective section
    assert derive_deepspeed_config(load_finetune_config("as2m"), 8, "cuda")["optimizer"]["type"] == "Adam"


# --- learning-rate schedule ---------------------------------------------------------------------

def test_multistep_halves_at_the_official_epochs():
    cfg = load_config("avsiam_base").optim
    lrs = [lr_at(s, cfg, 25) for s in range(25)]     # 25 "epochs": halve at 10, 15, 20
    assert lrs[9] == 1e-4 and lrs[10] == 5e-5 and lrs[15] == 2.5e-5 and lrs[24] == 1.25e-5


def test_warmup_then_cosine_to_the_floor():
    cfg = load_config(None, ["optim.schedule=cosine", "optim.warmup_steps=10", "optim.lr=1.0",
                             "optim.min_lr_ratio=0.1"]).optim
    assert lr_at(0, cfg, 110) == pytest.approx(0.1) and lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(10, cfg, 110) == pytest.approx(1.0) and lr_at(60, cfg, 110) == pytest.approx(0.55)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)


# --- launcher environment -----------------------------------------------------------------------

def test_torchrun_then_slurm_then_single_process_environment():
    env = detect_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234",
                      "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (3, 8, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "gpu[003-004,9]"}
    env = detect_env(slurm)
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (5, 8, 1, "slurm")
    assert env.master_addr == "gpu003" and env.master_port == slurm_port(4242) == 24242
    assert detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "single"
    assert first_host("node7,node8") == "node7" and first_host("a-b[10-12]") == "a-b10"


# --- checkpoints --------------------------------------------------------------------------------

def _fake_checkpoint(root, step, complete=True):
    folder = root / f"step_{step:08d}"
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (folder / COMPLETE).write_text(json.dumps({"step": step, "world_size": 2, "zero_stage": 2}))
    return folder


def test_auto_resume_never_picks_an_incomplete_checkpoint(tmp_path):
    assert find_resume_point("auto", tmp_path / "none") is None
    _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 20)
    _fake_checkpoint(tmp_path, 30, complete=False)      # killed while saving
    point = find_resume_point("auto", tmp_path)
    assert point.step == 20 and point.world_size == 2
    assert find_resume_point(str(tmp_path / "step_00000010"), tmp_path).step == 10
    with pytest.raises(FileNotFoundError, match="no complete.json"):
        find_resume_point(str(tmp_path / "step_00000030"), tmp_path)
    assert find_resume_point("none", tmp_path) is None


def test_prune_keeps_the_newest_and_drops_leftovers(tmp_path):
    for step in (10, 20, 30):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 25, complete=False)
    (tmp_path / "step_00000010_universal").mkdir()
    ctx = DistContext(env=DistEnv(0, 1, 0, "127.0.0.1", 1, "single"), device_type="cpu", backend="gloo")
    Checkpointer(tmp_path, ctx, keep=2).prune()
    assert [p.step for p in complete_checkpoints(tmp_path)] == [20, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000020", "step_00000030"]


def test_run_checkpoints_resume_point_and_the_same_world_size_rule(tmp_path):
    _fake_checkpoint(tmp_path, 10)                       # written by 2 ranks with ZeRO-2
    cfg = load_config("tiny_cpu", [f"checkpoint.dir={tmp_path}", "checkpoint.resume=auto",
                                   "deepspeed.zero_stage=2"])
    two = DistContext(env=DistEnv(0, 2, 0, "127.0.0.1", 1, "single"), device_type="cpu", backend="gloo")
    checkpointer, point = open_run_checkpoints(cfg, two, same_world_size=True)
    assert checkpointer.root == tmp_path and point.step == 10 and not point.universal
    one = DistContext(env=DistEnv(0, 1, 0, "127.0.0.1", 1, "single"), device_type="cpu", backend="gloo")
    with pytest.raises(RuntimeError, match="written by 2 ranks.*same number of ranks"):
        open_run_checkpoints(cfg, one, same_world_size=True)
    cfg.checkpoint.resume = "none"
    assert open_run_checkpoints(cfg, one, same_world_size=True)[1] is None


def test_rng_states_round_trip():
    import random

    import numpy as np
    state = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(json.loads(json.dumps({k: v for k, v in state.items() if k != "torch"})) | {"torch": state["torch"]})
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# --- metrics and signals ------------------------------------------------------------------------

def test_jsonl_resume_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLogger(path)
    for step in range(1, 6):
        log.log(step, {"loss": float(step), "bad": math.nan})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')                     # torn by a kill
    log = JsonlLogger(path, resume_step=3)
    log.log(4, {"loss": 40.0})
    log.close()
    records = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == 40.0
    assert records[0]["bad"] == "nan"


def test_stop_request_records_a_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert stop.should_stop() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.should_stop() == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before
    with StopRequest() as stop:
        stop.request()
        assert stop.should_stop() == "requested"


# --- FLOPs and the module -----------------------------------------------------------------------

def test_flops_are_model_info_forward_flops_times_three():
    from trainer.model.info import forward_gflops, meta_model
    cfg = load_config("tiny_cpu")
    ratios = cfg.objective.mask_ratios
    f = forward_gflops(meta_model("tiny", audio_frames=128, image_size=64, depth=4, decoder_depth=1), ratios)
    both = train_flops_per_sample(cfg.model, ratios, 0.75)
    assert both == pytest.approx(3e9 * (f["contrastive"] + f["reconstruction"]))
    assert train_flops_per_sample(cfg.model, ratios, 0.75, reconstruction=False) == pytest.approx(3e9 * f["contrastive"])
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12 and peak_flops("cpu", "fp32") is None
    assert mfu(1e12, 100.0, 989e12) == pytest.approx(100e12 / 989e12) and mfu(1.0, 1.0, None) is None


def test_pretrain_module_freezes_what_pretraining_never_calls():
    from trainer.engine.module import build_pretrain_module, param_groups
    cfg = load_config("tiny_cpu", ["model.depth=1"])
    module = build_pretrain_module(cfg)
    frozen = {n.split(".")[1] for n, p in module.named_parameters() if not p.requires_grad}
    assert frozen == {"head_a", "head_v", "head_av"}
    groups = {g["name"]: g for g in param_groups(module, 0.05)}
    assert set(groups) == {"backbone", "backbone/no_decay", "fusion", "fusion/no_decay", "decoder",
                           "decoder/no_decay"}
    names = {id(p): n for n, p in module.named_parameters()}
    no_decay = {names[id(p)] for p in groups["backbone/no_decay"]["params"]}
    assert "model.embed_a.pos_embed" in no_decay and groups["backbone/no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim > 1 and g["weight_decay"] == 0.05 and g["lr_scale"] == 1.0
               for name, g in groups.items() if "/" not in name for p in g["params"])
    no_rec = build_pretrain_module(load_config("tiny_cpu", ["model.depth=1", "objective.reconstruction_weight=0"]))
    assert not any(p.requires_grad for p in no_rec.model.decoder.parameters())
