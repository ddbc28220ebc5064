"""The command-line glue `avsiam pretrain` and `avsiam finetune` share.

Both take `--config PRESET_OR_YAML`, `key=value` overrides, `--resume`, `--out` (and fine-tuning
`--init`) as shorthands for overrides, and `--print-config`; both print a one-line summary on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

# Shorthand flags (argparse dest) and the config key each one overrides.
FLAG_KEYS = (("init", "init.checkpoint"), ("out", "out_dir"), ("resume", "checkpoint.resume"))


def add_run_arguments(parser: argparse.ArgumentParser, *, config_help: str, override_example: str,
                      init_help: str | None = None) -> None:
    """--config, (--init,) --resume, --out, the `key=value` overrides and --print-config."""
    parser.add_argument("--config", required=True, help=config_help)
    if init_help is not None:
        parser.add_argument("--init", default=None, help=init_help)
    parser.add_argument("--resume", default=None,
                        help="auto (newest complete checkpoint, if any), none, or a checkpoint folder; "
                             "same as checkpoint.resume=...")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --resume none: delete the checkpoints and logs a previous run left "
                             "in the run folder, then start afresh (without it such a folder is refused)")
    parser.add_argument("--out", default=None,
                        help="run folder (logs, metrics, checkpoints); same as out_dir=...")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"config overrides with dotted keys, e.g. {override_example}")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def overrides_with_flags(args: argparse.Namespace) -> list[str]:
    """The `key=value` overrides, then one for each shorthand flag that was given."""
    overrides = list(args.overrides)
    for flag, key in FLAG_KEYS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def load_run_config(args: argparse.Namespace, load: Callable[[str, list[str]], Any], command: str
                    ) -> Any | None:
    """`load(--config, overrides)`; with --print-config, print the config as JSON and return None.
    A config to run must name its training shards (data.train)."""
    cfg = load(args.config, overrides_with_flags(args))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return None
    from trainer.engine.preflight import check_run_start
    from trainer.engine.run_folder import open_run_folder
    check_run_start(cfg, command)
    open_run_folder(cfg, command, list(sys.argv), overwrite=getattr(args, "overwrite", False))
    return cfg


def print_on_main_rank(line: str) -> None:
    """Print `line` on rank 0 only (RANK=0 or unset); it also goes to the run's train.log."""
    if os.environ.get("RANK", "0") == "0":
        from trainer.engine.run_log import log_line
        log_line(line, stream=sys.stdout)
