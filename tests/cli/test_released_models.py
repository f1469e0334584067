"""Released models in models/: each is listed, loads with its card's classes, and the command it is
the default of runs it when given no --model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamicvis_cli.checkpoints.registry import COMMAND_DEFAULTS, default_model, released_models
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


def _release_splits() -> tuple[int, int]:
    """The script that cuts the release data defines its held-out splits; read them from it."""
    script = REPO / "scripts" / "prepare_release_data.py"
    spec = importlib.util.spec_from_file_location("prepare_release_data", script)
    assert spec is not None and spec.loader is not None, script
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DOTA_SPLIT_X, module.OSBS_SPLIT_Y


# The ten-class detector: P0706_north columns >= MARINA_SPLIT_X were never trained on; the
# floors sit well under what the card measured (recall 0.97, precision 0.75 at IoU 0.5; 187
# ship boxes in the drone photo, 359 from the first, more duplicating release) so that a
# retrained model of the same quality, or other CPU arithmetic, still passes.
MARINA_SPLIT_X, OSBS_SPLIT_Y = _release_splits()
MARINA_MIN_RECALL, MARINA_MIN_PRECISION = 0.6, 0.5
BOATS_MIN = 100
# the change detector: IoU 0.37 / 0.42 on the held-out DSIFN-CD pairs, 0.64 on LEVIR-CD test_77 (its card)
CHANGE_MIN_IOU = 0.25
# the tree-crown detector: OSBS_029 rows >= OSBS_SPLIT_Y were never trained on (its card)
TREE_MODEL = "tiny.neon-trees"
TREES_MIN_FOUND = 15  # the card: 23 of the 29 held-out crowns at IoU 0.5


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
        assert f"dvis `{config['arch']}`" in card, name  # the card's architecture is the config's
        bands = ",".join(map(str, config["band_indexes"]))
        assert f"bands {bands}" in card, name


def test_the_cards_name_the_held_out_splits_the_release_data_script_cuts() -> None:
    detector_card = (MODELS / COMMAND_DEFAULTS["detect"] / "MODEL_CARD.md").read_text()
    assert f"x ≥ {MARINA_SPLIT_X}" in detector_card
    assert f"rows {OSBS_SPLIT_Y}–" in (MODELS / TREE_MODEL / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.iterdir() if (p / "config.json").is_file()))
def test_every_released_model_loads_with_its_weights(name: str) -> None:
    import torch

    from dynamicvis_cli.checkpoints.task import load_task_model

    config = json.loads((MODELS / name / "config.json").read_text())
    loaded = load_task_model(name, config["task"], device=torch.device("cpu"))
    assert not loaded.random and list(loaded.config.classes) == config["classes"]
    assert loaded.config.tile_size == config["tile_size"] and loaded.config.default_bands() == config["band_indexes"]


def test_segment_defaults_to_the_released_land_cover_model(tmp_path: Path) -> None:
    assert default_model("segment") == "tiny.dubai-landcover"
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


def test_detect_defaults_to_the_released_detector_and_finds_the_held_out_marina_ships(tmp_path: Path) -> None:
    import geopandas as gpd
    import numpy as np

    from dynamicvis_cli.data.discover import open_dataset
    from dynamicvis_cli.train.metrics import box_iou

    name = COMMAND_DEFAULTS["detect"]
    assert default_model("detect") == name
    dota = SHARED / "data" / "dota_harbour"
    if not dota.is_dir():
        pytest.skip(f"{dota} not found (needs ../shared/data)")
    (tmp_path / "dota").mkdir()
    for f in ("P0706_north.png", "P0706_north.txt"):
        (tmp_path / "dota" / f).symlink_to(dota / f)
    spec = open_dataset(tmp_path / "dota", "detect", format="dota")
    (truth,) = spec.records
    ships = truth.boxes[np.asarray(truth.labels) == spec.classes.index("ship")]
    east = ships[(ships[:, 0] + ships[:, 2]) / 2 >= MARINA_SPLIT_X]  # never trained on (the card)
    outs = {}
    for key, extra in (("all", []), ("ships", ["--classes", "ship"])):
        out = tmp_path / f"{key}.gpkg"
        r = _dvis("detect", dota / "P0706_north.png", "-o", out, "--pixel-coords", "--device", "cpu", "-q", *extra)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["model"] == name and not summary["random_weights"], summary
        outs[key] = gpd.read_file(out)
    assert set(outs["ships"]["class"]) == {"ship"}
    kept = outs["all"][outs["all"]["class"] == "ship"]
    assert len(kept) == len(outs["ships"])  # the filter drops the other classes, not ships
    found = outs["ships"][["x1", "y1", "x2", "y2"]].to_numpy()
    found = found[(found[:, 0] + found[:, 2]) / 2 >= MARINA_SPLIT_X]
    iou = box_iou(found, east)
    recall = float((iou.max(0) >= 0.5).mean()) if len(found) else 0.0
    precision = float((iou.max(1) >= 0.5).mean()) if len(found) else 0.0
    assert recall >= MARINA_MIN_RECALL and precision >= MARINA_MIN_PRECISION, (recall, precision, len(found))


def test_released_detector_finds_boats_in_a_drone_photo_and_refuses_unknown_classes(tmp_path: Path) -> None:
    import geopandas as gpd

    image = SHARED / "data" / "aerial_coco" / "boats.jpg"
    if not image.exists():
        pytest.skip(f"{image} not found (needs ../shared/data)")
    out = tmp_path / "boats.geojson"
    r = _dvis("detect", image, "-o", out, "--pixel-coords", "--classes", "ship", "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    boats = gpd.read_file(out)
    assert set(boats["class"]) == {"ship"}  # image pixels (GeoJSON readers assume lon/lat: no CRS to say so)
    assert len(boats) >= BOATS_MIN, len(boats)  # the photo shows hundreds of boats
    assert (boats.x1 >= 0).all() and (boats.x2 <= 1920).all() and (boats.y2 <= 1080).all()
    bad = _dvis("detect", image, "-o", tmp_path / "x.geojson", "--pixel-coords", "--classes", "spaceship",
                "--device", "cpu", "-q")
    assert bad.returncode == 2 and "spaceship" in bad.stderr and "airplane" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.geojson").exists()


@pytest.mark.parametrize(("folder", "pair"), [("change_dsifn", "1_1"), ("change_dsifn", "5_3"),
                                              ("change", "test_77_0512_0256")])
def test_change_defaults_to_the_released_change_detector(folder: str, pair: str, tmp_path: Path) -> None:
    """Pairs held out from the change detector's training (its card: the DSIFN-CD pairs and the
    LEVIR-CD pair with a new warehouse): the change it draws overlaps the labelled change far
    better than marking everything would (whose IoU is the changed fraction). New single houses
    (LEVIR-CD's other two held-out pairs) are a known failure of this experimental model, written
    in its card: not asserted."""
    import numpy as np
    import rasterio
    from PIL import Image

    name = COMMAND_DEFAULTS["change"]
    assert default_model("change") == name
    pairs = SHARED / "data" / folder
    if not pairs.is_dir():
        pytest.skip(f"{pairs} not found (needs ../shared/data)")
    out = tmp_path / "change.tif"
    r = _dvis("change", pairs / "A" / f"{pair}.png", pairs / "B" / f"{pair}.png", "-o", out, "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["model"] == name and not summary["random_weights"], summary
    with rasterio.open(out) as ds:
        predicted = ds.read(1) == 1
    truth = np.asarray(Image.open(pairs / "label" / f"{pair}.png")) > 0
    iou = float((predicted & truth).sum() / (predicted | truth).sum())
    assert iou >= CHANGE_MIN_IOU and iou > 1.5 * float(truth.mean()), (iou, float(predicted.mean()), float(truth.mean()))


def test_tree_detector_puts_crowns_at_their_utm_positions(tmp_path: Path) -> None:
    """``dvis detect OSBS_029.tif -o trees.gpkg --model <tree model>``: boxes come back in the
    scene's CRS (EPSG:32617), and the crowns of the held-out southern half, their pixel boxes
    taken through the raster's affine transform, are found there in metres."""
    import geopandas as gpd
    import numpy as np
    import rasterio

    from dynamicvis_cli.data.discover import open_dataset
    from dynamicvis_cli.infer.stitch_boxes import box_overlap
    from dynamicvis_cli.train.metrics import box_iou

    trees = SHARED / "data" / "neon_trees"
    if not (trees / "OSBS_029.tif").exists():
        pytest.skip(f"{trees / 'OSBS_029.tif'} not found (needs ../shared/data)")
    (tmp_path / "voc").mkdir()
    for f in ("OSBS_029.tif", "OSBS_029.xml"):
        (tmp_path / "voc" / f).symlink_to(trees / f)
    (truth,) = open_dataset(tmp_path / "voc", "detect", format="voc").records
    south = truth.boxes[(truth.boxes[:, 1] + truth.boxes[:, 3]) / 2 >= OSBS_SPLIT_Y]
    with rasterio.open(trees / "OSBS_029.tif") as ds:
        crs, t, width, height = ds.crs, ds.transform, ds.width, ds.height
    assert t.b == t.d == 0 and t.e < 0  # north-up: a pixel box maps to (min x, min y, max x, max y)
    truth_utm = np.stack([t.c + t.a * south[:, 0], t.f + t.e * south[:, 3],
                          t.c + t.a * south[:, 2], t.f + t.e * south[:, 1]], axis=1)

    out = tmp_path / "trees.gpkg"
    r = _dvis("detect", trees / "OSBS_029.tif", "-o", out, "--model", TREE_MODEL, "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["model"] == TREE_MODEL and not summary["random_weights"], summary
    found = gpd.read_file(out)
    assert found.crs == crs and set(found["class"]) == {"Tree"}
    utm = found.geometry.bounds[["minx", "miny", "maxx", "maxy"]].to_numpy()
    # every crown lies inside the scene's UTM footprint
    assert (utm[:, 0] >= t.c - 1e-6).all() and (utm[:, 2] <= t.c + width * t.a + 1e-6).all()
    assert (utm[:, 1] >= t.f + height * t.e - 1e-6).all() and (utm[:, 3] <= t.f + 1e-6).all()
    iou = box_iou(utm, truth_utm)  # in metres
    matched = int((iou.max(0) >= 0.5).sum())
    assert matched >= TREES_MIN_FOUND, (matched, len(truth_utm), len(utm))

    # --nms-match ios: the part-boxes and nested duplicates inside a better crown box go too.
    out_ios = tmp_path / "trees-ios.gpkg"
    r = _dvis("detect", trees / "OSBS_029.tif", "-o", out_ios, "--model", TREE_MODEL, "--device", "cpu",
              "--nms-match", "ios", "--iou-threshold", "0.6", "-q")
    assert r.returncode == 0, r.stderr
    b = gpd.read_file(out_ios).geometry.bounds[["minx", "miny", "maxx", "maxy"]].to_numpy()
    assert 0 < len(b) < len(utm), (len(b), len(utm))
    ios = box_overlap(b, b, "ios")  # checked against a plain-loop reference in test_stitch_boxes
    np.fill_diagonal(ios, 0)
    assert ios.max() <= 0.6 + 1e-6
