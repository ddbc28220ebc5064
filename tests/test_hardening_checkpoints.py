"""Weight files are read without running code: official .pth via torch.load(weights_only=True),
our own exports as safetensors; a malicious pickle dressed as an official checkpoint is refused."""
from __future__ import annotations

import builtins
import json
import pickle

import pytest
import torch

from official_reference import official_layout, random_official_state_dict
from trainer.checkpoint_io import CheckpointError, load_state_dict_file, save_state_dict_file
from trainer.model import AVSiam

GEOMETRY = dict(dim=192, depth=1, audio_tokens=32, visual_side=3, num_classes=4)


class _Payload:
    """Unpickling this runs `exec`, which writes a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _official_state():
    return random_official_state_dict(official_layout("finetune", **GEOMETRY), seed=0, dtype=torch.float32)


def _malicious_files(tmp_path):
    """Two official-looking files carrying the payload: torch.save's zip format and a bare pickle."""
    marker = tmp_path / "PWNED"
    zip_file = tmp_path / "avsiam_base_finetune_as2m.pth"
    state = _official_state()
    state["module.vit_base.pos_embed"] = _Payload(marker)
    torch.save(state, zip_file)
    bare_file = tmp_path / "cav_mae_legacy.pth"
    with open(bare_file, "wb") as f:
        pickle.dump({"module.mask_token": _Payload(marker)}, f)
    return marker, [zip_file, bare_file]


def test_the_crafted_file_really_runs_code_when_loaded_unsafely(tmp_path):
    """Control: without weights_only the payload runs, so the refusal below is meaningful."""
    marker, files = _malicious_files(tmp_path)
    torch.load(files[0], weights_only=False)
    assert marker.read_text() == "code ran"


def test_malicious_official_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker, files = _malicious_files(tmp_path)
    for path in files:
        with pytest.raises(CheckpointError) as info:
            AVSiam.from_official(path, size="tiny")
        message = str(info.value)
        assert str(path) in message and "refused to load" in message and "could run code" in message
        assert "safetensors" in message                   # says what to do instead
        assert not marker.exists()


def test_convert_command_refuses_a_malicious_file_with_a_clear_error(tmp_path, capsys):
    from cluster.cli import main
    marker, files = _malicious_files(tmp_path)
    out = tmp_path / "out.safetensors"
    assert main(["convert", "--from-official", str(files[0]), "--out", str(out), "--size", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "refused to load" in err and str(files[0]) in err
    assert not marker.exists() and not out.exists()


def test_timm_pretrained_path_is_read_safely_too(tmp_path):
    marker, files = _malicious_files(tmp_path)
    with pytest.raises(CheckpointError, match="refused to load"):
        AVSiam(size="tiny", pretrained=str(files[1]), depth=1)
    assert not marker.exists()


def test_plain_official_pth_loads_with_weights_only_and_converts(tmp_path, capsys):
    """A genuine tensors-only .pth (as released: 'module.' keys, optionally wrapped) converts fine."""
    from cluster.cli import main
    state = _official_state()
    path = tmp_path / "official.pth"
    torch.save({"state_dict": state, "epoch": 20}, path)       # a wrapped variant
    out = tmp_path / "converted.safetensors"
    assert main(["convert", "--from-official", str(path), "--out", str(out), "--size", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "placed" in printed and "ignored" in printed and "decoder" in printed
    model = AVSiam.load(out)
    assert torch.equal(model.head_av.fc.weight, state["module.mlp_head_mm.1.weight"])
    assert torch.equal(model.embed_v.proj.weight, 2 * state["module.vit_base.patch_embed.proj.weight"])


def test_our_exports_are_safetensors_with_the_config(tmp_path):
    model = AVSiam(size="tiny", num_classes=3, depth=1, audio_frames=64, image_size=32)
    path = tmp_path / "model.safetensors"
    model.save(path)
    with open(path, "rb") as f:                                 # safetensors: u64 header length + JSON
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert json.loads(header["__metadata__"]["avsiam_config"])["depth"] == 1
    assert set(load_state_dict_file(path)) == set(model.state_dict())
    with pytest.raises(CheckpointError, match="safetensors"):
        save_state_dict_file(model.state_dict(), tmp_path / "model.pth")


def test_unreadable_and_empty_files_get_clear_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="no such weight file"):
        load_state_dict_file(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match=str(garbage)):
        load_state_dict_file(garbage)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_state_dict_file(empty)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"12345678garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_state_dict_file(bad_st)
