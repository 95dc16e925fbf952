"""Fixtures for the apps tests: curated-format shards built from a real photograph (no curation run needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests' helper modules (fitting, cofe_test_callbacks)

from cofe_apps.synthetic import make_curated_shards


@pytest.fixture
def curated_shards(tmp_path) -> list[str]:
    return make_curated_shards(tmp_path / "curated")


@pytest.fixture(scope="session")
def make_curated():
    """The shard builder itself, for fixtures of other scopes."""
    return make_curated_shards
