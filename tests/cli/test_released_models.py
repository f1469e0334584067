"""Released models in models/: each is listed, loads with its card's classes, and the command it is
the default of runs it when given no --model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamicvis_cli.checkpoints.registry import COMMAND_DEFAULTS, default_model, released_models
from tests.conftest import SHARED

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_every_released_model_has_a_card_weights_and_config() -> None:
    found = released_models()
    bundled = {name: path for name, path in found.items() if path.parent == MODELS}
    assert set(COMMAND_DEFAULTS.values()) <= set(bundled)
    for name, path in bundled.items():
        card = (path / "MODEL_CARD.md").read_text()
        config = json.loads((path / "config.json").read_text())
        assert (path / "model.safetensors").stat().st_size < 150 * 2**20
        assert all(c in card for c in config["classes"]), name
        assert "Licence" in card and "held-out" in card.lower()


def test_segment_defaults_to_the_released_land_cover_model(tmp_path: Path) -> None:
    assert default_model("segment") == "tiny.dubai-landcover"
    assert default_model("detect") == "base"  # no released detector yet
    image = SHARED / "data" / "dubai" / "Tile 6" / "images" / "image_part_002.jpg"
    if not image.exists():
        pytest.skip(f"{image} not found (needs ../shared/data)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "dynamicvis_cli", "segment", str(image), "-o", str(tmp_path / "lc.tif"),
                        "--device", "cpu", "-q"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["model"] == "tiny.dubai-landcover" and not summary["random_weights"], summary
    import numpy as np
    import rasterio

    with rasterio.open(tmp_path / "lc.tif") as ds:
        classes = np.unique(ds.read(1))
    # the mangrove/coast image holds water, vegetation and land: the model finds at least those
    assert len(set(classes.tolist()) & {1, 3, 4}) == 3, classes
