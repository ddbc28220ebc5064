"""The `avsiam` entry point: one command, a subcommand per job, a useful --help."""
import subprocess
import sys
from pathlib import Path

from cluster.cli import COMMANDS, available_commands, main

REPO = Path(__file__).resolve().parents[1]


def _avsiam(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kw)


def test_help_lists_every_available_command_without_loading_torch():
    code = ("import sys; from cluster.cli import main; main(['--help']); "
            "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_NOT_LOADED')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in available_commands():
        assert f"  {name} " in proc.stdout
    assert "TORCH_NOT_LOADED" in proc.stdout


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["no-such-job"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'no-such-job'" in err and "choose from:" in err


def test_every_available_command_has_its_own_help():
    for name in available_commands():
        proc = _avsiam(name, "--help")
        assert proc.returncode == 0, f"avsiam {name} --help failed:\n{proc.stderr}"
        assert f"avsiam {name}" in proc.stdout


def test_registry_names_modules_of_the_four_packages():
    for name, (module, help_text) in COMMANDS.items():
        assert module.split(".")[0] in {"pipeline", "shards", "trainer", "cluster"}, name
        assert help_text and not help_text.endswith(".")


def test_overrides_may_follow_options():
    proc = _avsiam("pretrain", "--config", "tiny_cpu", "--out", "runs/x", "max_steps=3",
                   "--resume", "auto", "seed=7", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert '"max_steps": 3' in proc.stdout and '"seed": 7' in proc.stdout


def test_commands_with_subcommands_still_parse():
    proc = _avsiam("eval", "retrieval", "--help")
    assert proc.returncode == 0, proc.stderr


def test_shard_flag_defaults_are_the_defaults_of_the_dataclasses_that_own_them():
    """`avsiam shard` with no optional flag builds exactly the default plan, clip and limits."""
    import argparse

    from cluster.commands.shard_command import add_arguments, config_from_args
    from pipeline.params import ClipParams, MediaLimits
    from pipeline.plan import PlanParams

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--videos", "v", "--out", "o", "--workers", "1"]))
    assert (cfg.plan, cfg.clip, cfg.limits) == (PlanParams(), ClipParams(), MediaLimits())
