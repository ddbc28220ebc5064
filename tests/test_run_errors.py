"""User errors of a run fail early and in one line (issue 16): the whole config, data.options typed
as the loader's options, data.train existence and the seed are checked before any process group,
model or DeepSpeed engine exists; only rank 0 prints; --verbose shows the traceback; every hint
names a real flag or key; `avsiam submit` checks the job's config before sbatch."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def _avsiam(*argv, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory) -> Path:
    """A folder that holds one (empty-named) shard: enough for data.train to exist."""
    folder = tmp_path_factory.mktemp("shards")
    (folder / "train-000000.tar").write_bytes(b"\0" * 1024)
    return folder


@pytest.mark.e2e
@pytest.mark.parametrize("override,message", [
    ("data.options.nosie=true", "unknown config key(s) ['data.options.nosie']"),
    ("data.options.shuffle_buffer=-1", "data.options: shuffle_buffer must be >= 0"),
    ("seed=-1", "seed must be an integer >= 0"),
    ("optim.lrr=3", "unknown config key(s) ['optim.lrr']"),
])
def test_config_mistakes_fail_in_one_line_before_the_engine(shard_folder, tmp_path, override, message):
    out = tmp_path / "run"
    proc = _avsiam("pretrain", "--config", "tiny_cpu", f"data.train={shard_folder}", override, "--out", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("avsiam pretrain: ") and message in lines[0]
    assert not out.exists()          # nothing of the run was made: no engine, no folder


@pytest.mark.e2e
def test_missing_training_shards_fail_in_one_line(tmp_path):
    for command, extra in (("pretrain", []), ("finetune", ["num_classes=3"])):
        proc = _avsiam(command, "--config", "tiny_cpu", f"data.train={tmp_path / 'nowhere'}", *extra,
                       "--out", tmp_path / "run")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "data.train=" in lines[0] and "nowhere" in lines[0] and not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_only_rank_zero_prints_and_verbose_shows_the_traceback(shard_folder, tmp_path):
    argv = ("pretrain", "--config", "tiny_cpu", f"data.train={shard_folder}", "data.options.nosie=1")
    other = _avsiam(*argv, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert other.returncode == 2 and other.stderr.strip() == ""
    verbose = _avsiam(*argv, "--verbose")
    assert verbose.returncode != 0 and "Traceback (most recent call last)" in verbose.stderr
    assert "data.options.nosie" in verbose.stderr


@pytest.mark.e2e
def test_submit_refuses_a_job_whose_config_has_a_typo():
    proc = _avsiam("submit", "pretrain", "--dry-run", "--", "--config", "tiny_cpu", "optim.lrr=3")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "optim.lrr" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _avsiam("submit", "pretrain", "--dry-run", "--", "--config", "tiny_cpu", "--bogus", "auto")
    assert proc.returncode == 2 and "--bogus" in proc.stderr
    assert _avsiam("submit", "pretrain", "--dry-run", "--", "--config", "tiny_cpu",
                   "optim.lr=3e-4").returncode == 0


# --- hints -----------------------------------------------------------------------------------------

_FLAG_HINT = re.compile(r"avsiam ([a-z-]+)(?: ([a-z]+))?((?: --[a-z][a-z0-9-]*)+)")
_OPTION_HINT = re.compile(r"data\.options\.([a-z_]+)\b(?!\()")


def _options_of(parser: argparse.ArgumentParser, sub: str | None) -> set[str]:
    options = {s for action in parser._actions for s in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if sub in (None, name):
                    options |= _options_of(child, None)
    return options


def _source_strings() -> list[tuple[Path, str]]:
    found = []
    for folder in ("cluster", "pipeline", "shards", "trainer"):
        for path in sorted((REPO / folder).rglob("*.py")):
            found.append((path, path.read_text()))
    return found


def test_every_hint_names_a_real_flag_or_loader_option():
    from cluster.cli import COMMANDS
    from trainer.engine.preflight import loader_option_names

    parsers: dict[str, argparse.ArgumentParser] = {}
    wrong = []
    for path, text in _source_strings():
        for command, sub, flags in _FLAG_HINT.findall(text):
            if command not in COMMANDS:
                continue
            if command not in parsers:
                parsers[command] = argparse.ArgumentParser()
                importlib.import_module(COMMANDS[command][0]).add_arguments(parsers[command])
            known = _options_of(parsers[command], sub or None)
            wrong += [f"{path.name}: avsiam {command} {flag}" for flag in flags.split() if flag not in known]
        wrong += [f"{path.name}: data.options.{name}" for name in _OPTION_HINT.findall(text)
                  if name not in loader_option_names()]
    assert not wrong, wrong
