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
                        "--device", "cpu", "-q"], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["model"] == "tiny.dubai-landcover" and not summary["random_weights"], summary
    import numpy as np
    import rasterio

    with rasterio.open(tmp_path / "lc.tif") as ds:
        classes = np.unique(ds.read(1))
    # the mangrove/coast image holds water, vegetation and land: the model finds at least those
    assert len(set(classes.tolist()) & {1, 3, 4}) == 3, classes


def _dvis(*args: object, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dynamicvis_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def tile6_chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128-px land-cover chips (ImageFolder by majority class) of two Tile 6 images: held out from
    every released land-cover model's training and model selection."""
    dubai = SHARED / "data" / "dubai"
    if not dubai.is_dir():
        pytest.skip(f"{dubai} not found (needs ../shared/data)")
    root = tmp_path_factory.mktemp("lc")
    for stem in ("image_part_002", "image_part_005"):
        for sub, suffix in (("images", ".jpg"), ("masks", ".png")):
            (root / "dubai" / "Tile 6" / sub).mkdir(parents=True, exist_ok=True)
            (root / "dubai" / "Tile 6" / sub / f"{stem}{suffix}").symlink_to(dubai / "Tile 6" / sub / f"{stem}{suffix}")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "make_landcover_chips.py"
    r = subprocess.run([sys.executable, str(script), "--data", str(root / "dubai"), "--out", str(root / "chips")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return root / "chips" / "val"


def test_classify_defaults_to_the_released_chip_classifier(tile6_chips: Path, tmp_path: Path) -> None:
    name = COMMAND_DEFAULTS["classify"]
    assert default_model("classify") == name
    chips = sorted(tile6_chips.rglob("*.png"))
    truth = {p.name: p.parent.name for p in chips}
    assert len(chips) >= 20 and len(set(truth.values())) >= 3
    r = _dvis("classify", *chips, "-o", tmp_path / "lc.csv", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["model"] == name and not summary["random_weights"], summary
    import csv

    rows = list(csv.DictReader((tmp_path / "lc.csv").open()))
    assert len(rows) == len(chips)
    pairs = [(truth[Path(row["input"]).name], row["class"]) for row in rows]
    accuracy = sum(t == p for t, p in pairs) / len(pairs)
    constant = max(list(truth.values()).count(c) for c in set(truth.values())) / len(truth)
    water = [p for t, p in pairs if t == "water"]
    # better than always answering the commonest class; water (F1 0.88 on the card) is found.
    # Mangrove "vegetation" is a known failure (the card): not asserted.
    assert accuracy > constant and water.count("water") / len(water) >= 0.8, (accuracy, constant, pairs)


def test_index_build_defaults_to_the_released_embedder(tile6_chips: Path, tmp_path: Path) -> None:
    name = COMMAND_DEFAULTS["index"]
    assert default_model("index") == name
    built = _dvis("index", "build", tile6_chips, "-o", tmp_path / "lc.dvx", "--label-from-folder",
                  "--device", "cpu", "-q")
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["model"] == name and not summary["random_weights"], summary
    water = min((tile6_chips / "water").glob("*.png"))
    hits = _dvis("search", tmp_path / "lc.dvx", water, "-k", 5, "--format", "json", "--device", "cpu", "-q")
    assert hits.returncode == 0, hits.stderr
    found = json.loads(hits.stdout)
    labels = [hit["labels"] for hit in found["hits"]]
    assert found["hits"][0]["source"] == str(water) and found["hits"][0]["distance"] == 0  # itself
    assert labels.count(["water"]) >= 4, labels
