"""The config a queued job will run, built and checked on the submitting machine.

`avsiam submit pretrain|finetune -- ARGS` calls `check_job_config(kind, ARGS)` before sbatch: ARGS
are parsed by the job's own command and its config is built as `--print-config` would build it, so
a typo in a key, a flag or a value fails at once, in one line, instead of after the queue wait.
(Whether data.train exists is left to the job: the submitting machine may not see its files.)
"""
from __future__ import annotations

import argparse
import importlib

CHECKED_KINDS = ("pretrain", "finetune")


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(message)


def check_job_config(kind: str, job_args: list[str] | tuple[str, ...]):
    """The job's config (ValueError naming the problem); None for kinds without a run config."""
    if kind not in CHECKED_KINDS or not job_args:
        return None
    from cluster.cli import COMMANDS
    from cluster.commands.command_args import overrides_with_flags

    module = importlib.import_module(COMMANDS[kind][0])
    parser = _RaisingParser(prog=f"avsiam {kind}")
    module.add_arguments(parser)
    try:
        args = parser.parse_intermixed_args(list(job_args))
    except ValueError as exc:
        raise ValueError(f"the job's arguments (after --): {exc}") from None
    load = _config_loader(kind)
    try:
        cfg = load(args.config, overrides_with_flags(args))
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"the job's config: {exc}") from None
    if kind == "pretrain":
        from trainer.engine.paper_recipe import missing_weights_message
        refusal = missing_weights_message(cfg)      # a paper size without weights: refused before the queue
        if refusal:
            raise ValueError(f"the job's config: {refusal}")
    return cfg


def _config_loader(kind: str):
    if kind == "pretrain":
        from trainer.engine.config import load_config
        return load_config
    from trainer.finetune.config import load_finetune_config
    return load_finetune_config
