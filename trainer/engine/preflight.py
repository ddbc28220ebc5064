"""Checks of a run config that need no model, engine or process group: run before any of them.

`check_loader_options` types `data.options` against the loader's own config (`LoaderConfig`): an
unknown key or a bad value fails when the config is read, not after the engine is built.
`check_run_start` adds what only a run (not `--print-config`) needs: training shards that exist
and a usable seed. Errors are ValueErrors naming the key and the fix (one line on the command line).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

# LoaderConfig fields a run sets itself (data.batch_size, data.num_workers, data.normalization, seed, mode).
ENGINE_SET = ("mode", "batch_size", "rank", "world_size", "num_workers", "seed", "normalization")


def loader_option_names() -> list[str]:
    from shards.config import LoaderConfig
    return [f.name for f in dataclasses.fields(LoaderConfig) if f.name not in ENGINE_SET]


def check_loader_options(options: dict[str, Any], *, batch_size: int, num_workers: int) -> dict[str, Any]:
    """`data.options` typed as LoaderConfig fields (YAML values coerced to the field's type, e.g.
    an int where a float is expected); keys the run sets, unknown keys, wrong types and values the
    loader would refuse are errors naming data.options.KEY."""
    from shards.config import LoaderConfig

    from .yaml_config import coerce

    reserved = sorted(set(ENGINE_SET) & set(options))
    if reserved:
        raise ValueError(f"data.options may not set {reserved}: the engine sets them "
                         "(use data.batch_size, data.num_workers, data.normalization, seed)")
    valid = loader_option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown config key(s) {['data.options.' + k for k in unknown]}; valid in "
                         f"data.options: {', '.join(valid)}")
    hints = typing.get_type_hints(LoaderConfig)
    typed = {k: coerce(v, hints[k], f"data.options.{k}") for k, v in options.items()}
    try:
        LoaderConfig(batch_size=batch_size, num_workers=num_workers, **typed)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data.options: {exc}") from None
    return typed


def check_run_start(cfg, command: str) -> None:
    """Before a run starts (and before its folder is touched): the seed is an integer >= 0, a
    paper-size pretraining names its weights (paper_recipe.py), data.train names shards that exist."""
    from shards.sources import expand_urls

    from .paper_recipe import missing_weights_message

    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {cfg.seed!r}")
    refusal = missing_weights_message(cfg, command) if command == "pretrain" else None
    if refusal:
        raise ValueError(refusal)
    if not cfg.data.train:
        raise ValueError(f"avsiam {command}: no training shards; set data.train=DIR_OR_URLS "
                         "(e.g. the --out folder of `avsiam shard`)")
    if os.path.isdir(cfg.data.train):
        return                      # what the folder holds is the loader's to check
    try:
        expand_urls(cfg.data.train, allow_pipe=bool(cfg.data.options.get("allow_pipe")))
    except (ValueError, OSError) as exc:
        raise ValueError(f"data.train={cfg.data.train}: {exc}") from None
