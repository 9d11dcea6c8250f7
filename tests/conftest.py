"""Shared fixtures. Exports are cached across test sessions (and with `make demo`) so the suite stays fast."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def export_cache() -> Path:
    """Point GRAPHOPT_CACHE at a persistent cache (GRAPHOPT_TEST_CACHE, else the user's default)."""
    path = Path(os.environ.get("GRAPHOPT_TEST_CACHE", Path.home() / ".cache" / "graphopt"))
    old = os.environ.get("GRAPHOPT_CACHE")
    os.environ["GRAPHOPT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GRAPHOPT_CACHE", None)
    else:
        os.environ["GRAPHOPT_CACHE"] = old


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
