"""Tests of dynamicvis_cli.geo on real rasters from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED

DATA = SHARED / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"{relative} not found under {DATA} (needs ../shared beside the checkout)")
    return path
