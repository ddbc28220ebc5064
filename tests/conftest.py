"""Shared pytest set-up. Helpers the test modules import live in `fixtures.py` (clips, CLI runs,
snapshots), `slurm_fixtures.py`, `hostile_shards.py` and `engine_launch.py`.

Markers (registered in pyproject.toml): `e2e` marks end-to-end tests (real command runs, trainings,
clusters), so `pytest -m "not e2e"` runs the unit tests in about a minute; every `slurm` test is
end to end too (added here).
"""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.e2e)
