"""`avsiam export-timm`: the shared backbone's visual path as a plain timm ViT state dict (safetensors)."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="IN.safetensors",
                        help="AVSiam weights written by `avsiam convert` or `avsiam export`")
    parser.add_argument("--out", required=True, metavar="OUT.safetensors")


def main(args: argparse.Namespace) -> int:
    import timm

    from trainer.checkpoint_io import CheckpointError, load_state_dict_file, save_state_dict_file
    from trainer.model.avsiam import CONFIG_METADATA_KEY
    from trainer.model.config import AVSiamConfig
    from trainer.model.timm_export import export_timm_state_dict, timm_pretrained_cfg, timm_vit_kwargs

    try:
        state, metadata = load_state_dict_file(args.checkpoint, with_metadata=True)
    except CheckpointError as exc:
        print(f"avsiam export-timm: {exc}", file=sys.stderr)
        return 1
    if CONFIG_METADATA_KEY not in metadata:
        print(f"avsiam export-timm: {args.checkpoint}: no model config in its metadata; write it with "
              "`avsiam convert` or `avsiam export` first", file=sys.stderr)
        return 1
    cfg = AVSiamConfig.from_json(metadata[CONFIG_METADATA_KEY])
    exported = export_timm_state_dict(state)
    kwargs = timm_vit_kwargs(cfg)
    # Prove the result is a plain timm ViT: build it and load strictly.
    timm.create_model(cfg.spec.timm_name, pretrained=False, **kwargs).load_state_dict(exported, strict=True)
    pretrained_cfg = timm_pretrained_cfg(cfg)
    save_state_dict_file(exported, args.out, {"timm_model": cfg.spec.timm_name, "timm_kwargs": json.dumps(kwargs),
                                              "pretrained_cfg": json.dumps(pretrained_cfg)})
    print(f"wrote {args.out}: {cfg.spec.timm_name} visual path, {len(exported)} tensors, input "
          f"{cfg.image_size} px, ImageNet mean/std. Load it with:\n" + load_snippet(cfg.spec.timm_name, kwargs, args.out))
    return 0


def load_snippet(name: str, kwargs: dict, path) -> str:
    """Python that loads the exported file with its pretrained_cfg (README "export-timm")."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return ("  import json, timm\n  from safetensors import safe_open\n"
            f"  with safe_open({str(path)!r}, 'pt') as f: cfg = json.loads(f.metadata()['pretrained_cfg'])\n"
            f"  m = timm.create_model({name!r}, pretrained=True, {args},\n"
            f"                        pretrained_cfg_overlay=dict(cfg, file={str(path)!r}))\n"
            "  transform = timm.data.create_transform(**timm.data.resolve_data_config(model=m))")
