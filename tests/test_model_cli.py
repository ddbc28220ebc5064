"""The model's commands: model-info, convert (round trip) and export-timm."""
from __future__ import annotations

import json

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from cluster.cli import main
from official_reference import official_layout, random_official_state_dict
from trainer.checkpoint_io import load_state_dict_file
from trainer.model import AVSiam
from trainer.model.info import parameter_groups

torch.set_num_threads(2)


def test_model_info_prints_parameters_and_flops_for_every_size(capsys):
    assert main(["model-info"]) == 0
    table = capsys.readouterr().out
    for size in ("tiny", "base", "large", "huge"):
        assert sum(line.startswith(size) for line in table.splitlines()) == 2   # parameters + GFLOPs rows
    assert main(["model-info", "--size", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = AVSiam(size="tiny")
    assert info["parameters"] == parameter_groups(model)
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert info["parameters"]["shared"] == sum(p.numel() for n, p in model.named_parameters()
                                               if n.startswith("blocks.") and (".attn." in n or ".mlp." in n))
    # visual-only = a plain timm ViT-Ti without class token + the head's linear layer
    # (on the meta device, where attention is counted too; CPU's fused attention kernel is not)
    with torch.device("meta"):
        vit = timm.create_model("vit_tiny_patch16_224", class_token=False, global_pool="avg", fc_norm=False,
                                num_classes=0)
        with FlopCounterMode(display=False) as counter:
            vit(torch.zeros(1, 3, 224, 224))
    expected = (counter.get_total_flops() + 2 * 192 * 527) / 1e9
    flops = info["gflops_per_sample"]
    assert abs(flops["visual_only"] - expected) < 1e-3
    assert flops["audio_visual"] > flops["audio_only"] + flops["visual_only"]
    assert flops["contrastive"] < flops["audio_only"] + flops["visual_only"]   # masking saves compute
    # the per-part sums equal counting the whole audio-visual forward
    with torch.device("meta"):
        meta = AVSiam(size="tiny")
        with FlopCounterMode(display=False) as counter:
            meta.classify(audio=torch.zeros(1, 1024, 128), visual=torch.zeros(1, 3, 224, 224))
    assert abs(flops["audio_visual"] - counter.get_total_flops() / 1e9) < 1e-3


def test_model_info_counts_the_separate_variant(capsys):
    assert main(["model-info", "--size", "base", "--json"]) == 0
    shared = json.loads(capsys.readouterr().out)["parameters"]
    assert main(["model-info", "--size", "base", "--separate", "--json"]) == 0
    separate = json.loads(capsys.readouterr().out)["parameters"]
    assert separate["shared"] == 0
    assert separate["total"] - shared["total"] == shared["shared"]   # one more copy of attention + MLP


def test_convert_round_trip_and_export_timm(tmp_path, capsys):
    state = random_official_state_dict(official_layout("finetune", dim=192, depth=2, audio_tokens=32, visual_side=3,
                                                       num_classes=6), seed=0, dtype=torch.float32)
    official = tmp_path / "official.pth"
    torch.save(state, official)
    ours = tmp_path / "ours.safetensors"
    assert main(["convert", "--from-official", str(official), "--out", str(ours), "--size", "tiny"]) == 0
    direct = AVSiam.from_official(state, size="tiny").eval()
    loaded = AVSiam.load(ours).eval()
    # the official weights were trained on the paper's normalisation: the file says so for evaluation
    assert loaded.facts.normalization == {"mean": -5.081, "std": 4.4849, "source": "paper"}
    fbank, frames = torch.randn(2, 64, 128), torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        for kwargs in (dict(audio=fbank), dict(visual=frames), dict(audio=fbank, visual=frames)):
            assert torch.equal(loaded.classify(**kwargs), direct.classify(**kwargs))

    exported = tmp_path / "timm_vit.safetensors"
    assert main(["export-timm", "--checkpoint", str(ours), "--out", str(exported)]) == 0
    capsys.readouterr()
    weights, metadata = load_state_dict_file(exported, with_metadata=True)
    vit = timm.create_model(metadata["timm_model"], **json.loads(metadata["timm_kwargs"])).eval()
    vit.load_state_dict(weights, strict=True)
    with torch.no_grad():
        assert torch.allclose(vit(frames), loaded.embed_visual(frames), atol=1e-4)
        assert torch.allclose(vit.forward_features(frames).mean(1), loaded.embed_visual(frames), atol=1e-4)
    assert not any(k.endswith("_a.weight") or k.startswith(("fusion", "decoder", "head")) for k in weights)


def test_export_timm_refuses_files_without_our_config(tmp_path, capsys):
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, foreign)
    assert main(["export-timm", "--checkpoint", str(foreign), "--out", str(tmp_path / "o.safetensors")]) == 1
    assert "no model config" in capsys.readouterr().err


def test_export_timm_pretrained_cfg_matches_training_input(tmp_path, capsys):
    """The exported file's pretrained_cfg (and the printed snippet) give timm the transform of the
    AVSiam loader: the model's frame size and ImageNet mean/std, not the augreg tag's 0.5 / 224."""
    from timm.data import resolve_data_config

    from shards.transforms import IMAGENET_MEAN, IMAGENET_STD
    model = AVSiam(size="tiny", num_classes=3, image_size=48, audio_frames=64, depth=2, decoder_depth=1)
    ours, exported = tmp_path / "ours.safetensors", tmp_path / "vit.safetensors"
    model.save(ours)
    assert main(["export-timm", "--checkpoint", str(ours), "--out", str(exported)]) == 0
    snippet = capsys.readouterr().out.split("Load it with:\n", 1)[1]
    scope: dict = {}
    exec("\n".join(line[2:] for line in snippet.splitlines()), scope)   # the printed snippet runs
    vit = scope["m"]
    config = resolve_data_config(model=vit)
    assert tuple(config["input_size"]) == (3, 48, 48)
    assert tuple(config["mean"]) == IMAGENET_MEAN and tuple(config["std"]) == IMAGENET_STD
    frames = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(vit.eval()(frames), model.eval().embed_visual(frames), atol=1e-4)
