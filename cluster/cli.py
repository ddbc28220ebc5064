"""The `avsiam` command: one subcommand per job.

The cluster layer launches the other three (pipeline -> shards -> trainer); this module is its front
door. Each subcommand lives in its own module, which exposes

    add_arguments(parser: argparse.ArgumentParser) -> None
    main(args: argparse.Namespace) -> int | None

and is imported only when that subcommand runs, so `avsiam --help` answers without loading torch.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help). Order is the order of `avsiam --help`: the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cluster.commands.synth_command", "write the built-in synthetic audio-visual dataset"),
    "shard": ("cluster.commands.shard_command", "decode clips once and write WebDataset shards"),
    "stats": ("cluster.commands.stats_command", "compute exact fbank mean/std over shards into dataset.json"),
    "verify": ("cluster.commands.verify_command", "check every shard: readable, counts, shapes"),
    "model-info": ("cluster.commands.model_info_command", "print parameters and GFLOPs of every model size"),
    "convert": ("cluster.commands.convert_command", "convert an official AVSiam checkpoint to safetensors"),
    "export-timm": ("cluster.commands.export_timm_command", "write the shared backbone as a timm ViT state dict"),
    "pretrain": ("cluster.commands.pretrain_command", "pretrain AVSiam with DeepSpeed on streamed shards"),
    "export": ("cluster.commands.export_command", "write consolidated fp32 weights of a run as safetensors"),
    "finetune": ("cluster.commands.finetune_command", "fine-tune a pretrained model for classification"),
    "eval": ("cluster.commands.eval_command", "evaluate: classification (mAP, accuracy) or retrieval"),
    "embed": ("cluster.commands.embed_command", "write audio and visual embeddings of shards to Parquet"),
    "plot": ("cluster.commands.plot_command", "draw figures (t-SNE of embeddings, loss curves)"),
    "submit": ("cluster.submit", "render and sbatch a sharding array or a pretraining or fine-tuning job"),
    "demo": ("cluster.demo", "run the whole system on the built-in synthetic dataset"),
}


# Commands whose ranks catch SIGTERM/SIGUSR1 to checkpoint and stop (trainer/engine/signals.py).
TRAINING_COMMANDS = ("pretrain", "finetune")


def available_commands() -> dict[str, tuple[str, str]]:
    """The registered subcommands whose module exists in this checkout."""
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found[name] = (module, help_text)
    return found


def _top_parser(commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<12} {help_text}" for name, (_, help_text) in commands.items())
    return argparse.ArgumentParser(
        prog="avsiam",
        description="Shard audio-visual datasets, stream them, and pretrain/evaluate AVSiam.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="avsiam <command> [options]   (avsiam <command> --help for its options)",
        epilog=f"commands:\n{lines}\n\nData flows pipeline -> shards -> trainer; see README.md.\n"
               "Mistakes are reported in one line (exit 2); add --verbose to any command for the "
               "traceback and the libraries' own messages.",
    )


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options may stand anywhere among `key=value` overrides (`--out DIR max_steps=3`); commands with
    sub-commands (argparse cannot intermix those) parse the plain way."""
    try:
        return parser.parse_intermixed_args(argv)
    except TypeError:
        return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .user_errors import report_user_error, take_verbose, user_error_message

    argv, verbose = take_verbose(list(sys.argv[1:] if argv is None else argv))
    commands = available_commands()
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser(commands).print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in commands:
        _top_parser(commands).print_usage(sys.stderr)
        print(f"avsiam: unknown command {name!r}; choose from: {', '.join(commands)}", file=sys.stderr)
        return 2
    module_name, help_text = commands[name]
    if name in TRAINING_COMMANDS:  # before torch & co: a stop signal sent while starting is kept
        from trainer.engine.signals import install_early_handlers
        install_early_handlers()
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"avsiam {name}", description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.add_arguments(parser)
    args = _parse(parser, argv[1:])
    try:
        code = module.main(args)
    except KeyboardInterrupt:
        print(f"avsiam {name}: interrupted", file=sys.stderr)
        return 130
    except (Exception, SystemExit) as exc:   # user errors: one line (see user_errors.py)
        message = None if verbose else user_error_message(exc)
        if message is None:
            raise
        return report_user_error(name, message)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
