"""Shared fixtures: real data from ../shared (skipped with a reason when absent), devices."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(os.environ.get("DVIS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REFERENCE = SHARED / "reference"


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def cpu_and_cuda() -> list[Any]:
    """Device parameters: 'cpu' always, 'cuda' marked needs_cuda (skipped on CPU machines)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)]


@pytest.fixture(scope="session")
def official_small_a() -> Path:
    path = REFERENCE / "official_small_a"
    if not (path / "weights.safetensors").is_file():
        pytest.skip(f"reference fixture not found at {path} (needs ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, Any]]:
    path = REFERENCE / "manifests"
    if not path.is_dir():
        pytest.skip(f"manifests not found at {path}")
    return {name: json.loads((path / f"{name}.json").read_text()) for name in ("base", "large")}


@pytest.fixture(autouse=True)
def _isolated_model_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read the user's DVIS_MODEL_PATH."""
    monkeypatch.delenv("DVIS_MODEL_PATH", raising=False)
