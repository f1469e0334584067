"""Region classification end to end: ``dvis finetune --task region`` on real NWPU VHR-10 boxes, the
checkpoint through ``dvis evaluate --task region`` and ``dvis classify --regions`` (real
subprocesses), on a pixel-grid image and on a georeferenced copy whose regions come in lon/lat."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from shapely.geometry import box

from tests.cli.test_finetune_cli import cli, dvis
from tests.train.fixtures import make_coco_crops

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A region classifier overfit on four NWPU crops, each centred on an object of another class."""
    import torch

    root = tmp_path_factory.mktemp("region")
    data = make_coco_crops(root / "data", n=4, size=96, distinct=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, out, err = cli("finetune", "--task", "region", "--data", data, "-m", "tiny", "-o", root / "run",
                             "--steps", 30, "--batch-size", 4, "--tile-size", 96, "--lr", 3e-3,
                             "--set", "augment=none", "--set", "gumbel_schedule=\"off\"",
                             "--set", "freeze_stages=0", "--set", "warmup_steps=2", "--device", "cpu", "-q")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["final_loss"] < summary["first_loss"] / 4, summary
    return root, data, json.loads(data.read_text())


def test_evaluate_scores_the_given_boxes(trained: tuple[Path, Path, dict]) -> None:
    root, data, coco = trained
    r = dvis("evaluate", "--task", "region", "-m", root / "run", "--data", data, "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)["metrics"]
    assert metrics["count"] == len(coco["annotations"]) and metrics["accuracy"] == 1.0, metrics


def _truth(coco: dict, image: dict) -> tuple[list[str], list[list[float]]]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    return [names[a["category_id"]] for a in anns], [a["bbox"] for a in anns]


def test_classify_regions_on_pixel_images(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    root, data, coco = trained
    for image in coco["images"][1:3]:  # two of the four (each a subprocess); the CRS test takes the first
        names, bboxes = _truth(coco, image)
        regions = tmp_path / f"{image['id']}.gpkg"
        gpd.GeoDataFrame({"truth": names}, geometry=[box(x, y, x + w, y + h) for x, y, w, h in bboxes],
                         crs=None).to_file(regions)
        out = tmp_path / f"{image['id']}.out.gpkg"
        r = dvis("classify", data.parent / "images" / image["file_name"], "--regions", regions, "-m",
                 root / "run", "-o", out, "--pixel-coords", "--device", "cpu", "-q")
        assert r.returncode == 0, r.stderr
        got = gpd.read_file(out)
        assert list(got["truth"]) == names and list(got["class"]) == names, got
        assert (got["score"] > 0.5).all() and got["note"].isna().all()


def test_classify_regions_in_another_crs(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    """The first crop as a UTM GeoTIFF; its regions given in lon/lat (GeoJSON) plus one far away."""
    root, data, coco = trained
    image = coco["images"][0]
    names, bboxes = _truth(coco, image)
    pixels = np.asarray(Image.open(data.parent / "images" / image["file_name"]).convert("RGB"))
    transform = from_origin(500_000.0, 4_100_000.0, 0.5, 0.5)
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8",
                       crs="EPSG:32618", transform=transform) as ds:
        ds.write(pixels.transpose(2, 0, 1))
    geoms = [box(*(transform @ (x, y + h)), *(transform @ (x + w, y))) for x, y, w, h in bboxes]
    geoms.append(box(400_000, 4_000_000, 400_010, 4_000_010))  # not on the scene
    regions = tmp_path / "regions.geojson"
    gpd.GeoDataFrame({"truth": [*names, "far"]}, geometry=geoms, crs="EPSG:32618").to_crs(4326).to_file(regions)
    out = tmp_path / "out.geojson"
    r = dvis("classify", scene, "--regions", regions, "-m", root / "run", "-o", out, "--device", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    got = gpd.read_file(out)
    assert list(got["class"][:-1]) == names and got["class"].isna().iloc[-1], got
    assert got["note"].iloc[-1] == "outside the scene"
    assert json.loads(r.stdout)["runs"][0]["unclassified"] == 1


@pytest.mark.parametrize("case, message", [
    ("missing", "regions file does not exist"),
    ("no-crs", "regions have no CRS"),
    ("empty", "has no features"),
])
def test_bad_region_inputs_are_usage_errors(trained: tuple[Path, Path, dict], tmp_path: Path, case: str,
                                            message: str) -> None:
    root, _, _ = trained
    from tests.conftest import SHARED

    scene = SHARED / "data" / "geotiff" / "RGB.byte.tif"
    if not scene.exists():
        pytest.skip(f"{scene} not found (needs ../shared/data)")
    regions = tmp_path / "r.gpkg"
    if case == "no-crs":
        gpd.GeoDataFrame({"a": [1]}, geometry=[box(0, 0, 10, 10)], crs=None).to_file(regions)
    if case == "empty":
        gpd.GeoDataFrame({"a": []}, geometry=[], crs="EPSG:4326").to_file(regions)
    r = dvis("classify", scene, "--regions", regions if case != "missing" else tmp_path / "nope.gpkg",
             "-m", root / "run", "-o", tmp_path / "o.gpkg", "--device", "cpu", "-q")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.gpkg").exists()
