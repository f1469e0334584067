"""Instance masks → polygons in ``dvis detect``: conversion, merge payloads, whole scenes, the CLI.

Rasters are real (../shared/data); positions are checked in map coordinates against polygons
built independently from the raster's affine transform. The scene test uses a marker "model"
(a threshold on the bands, as in test_detect_georef.py) so the expected mask is known exactly;
the CLI test runs the real tiny Mask R-CNN with random weights and checks the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import Polygon, box
from torch import nn

from dynamicvis_cli.checkpoints.registry import arch_config
from dynamicvis_cli.checkpoints.store import save_checkpoint
from dynamicvis_cli.checkpoints.task import LoadedTaskModel, load_task_model
from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.geo.crs import pixel_to_map
from dynamicvis_cli.infer.context import RunOptions
from dynamicvis_cli.infer.detect import detect_scene, detect_task, mask_to_polygon, tile_mask_polygons
from dynamicvis_cli.infer.stitch_boxes import BoxMerger
from tests.cli.test_scene_commands import dvis
from tests.conftest import SHARED

DATA = SHARED / "data"


def data_file(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (needs ../shared/data)")
    return path


def real_transform() -> Affine:
    with rasterio.open(data_file("geotiff", "RGB.byte.tif")) as ds:
        return ds.transform


def map_polygon(transform: Affine, corners: list[tuple[float, float]]) -> Polygon:
    """A polygon from (col, row) pixel-corner vertices, through the affine transform."""
    cols, rows = np.array(corners, dtype=np.float64).T
    return Polygon(zip(*pixel_to_map(transform, cols, rows)))


def l_shape(r: int, c: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """An L of 45 pixels at (r, c) in a 9×9 square: (rows, cols) index arrays and its outline."""
    yy, xx = np.mgrid[0:9, 0:9]
    on = (xx < 3) | (yy >= 6)
    outline = [(c, r), (c + 3, r), (c + 3, r + 6), (c + 9, r + 6), (c + 9, r + 9), (c, r + 9)]
    return (yy[on] + r, xx[on] + c), outline


# -- mask → polygon -----------------------------------------------------------------------------


def test_mask_polygon_lands_at_the_right_map_coordinates() -> None:
    transform = real_transform()  # RGB.byte.tif: UTM 18N, 300.04 m pixels
    mask = np.zeros((20, 30), dtype=bool)
    (rows, cols), outline = l_shape(4, 5)
    mask[rows, cols] = True
    mask[8, 6] = False                  # a one-pixel hole inside the L's vertical bar
    mask[0, 29] = True                  # a stray pixel: a smaller part, dropped
    poly = mask_to_polygon(mask, col_off=400, row_off=300, transform=transform)
    assert isinstance(poly, Polygon) and poly.is_valid and len(poly.interiors) == 1
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    assert poly.area == pytest.approx(44 * pixel_area)
    expected = map_polygon(transform, [(x + 400, y + 300) for x, y in outline])
    hole = map_polygon(transform, [(406, 308), (407, 308), (407, 309), (406, 309)])
    assert poly.symmetric_difference(expected.difference(hole)).area == pytest.approx(0, abs=1e-6)
    xs, ys = pixel_to_map(transform, [405, 414], [304, 313])  # the L's outer pixel corners
    assert poly.bounds == pytest.approx((xs.min(), ys.min(), xs.max(), ys.max()))
    assert mask_to_polygon(np.zeros((5, 5), dtype=bool), 0, 0, transform) is None


def test_mask_polygon_follows_a_rotated_grid() -> None:
    transform = real_transform() @ Affine.rotation(30)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:4] = True
    poly = mask_to_polygon(mask, col_off=10, row_off=20, transform=transform)
    assert poly is not None
    expected = map_polygon(transform, [(11, 21), (14, 21), (14, 23), (11, 23)])
    assert poly.symmetric_difference(expected).area == pytest.approx(0, abs=1e-6)


def test_tile_masks_are_thresholded_cut_to_valid_pixels_and_may_be_empty() -> None:
    transform = real_transform()
    masks = torch.zeros(3, 1, 32, 32)
    masks[0, 0, 4:8, 4:10] = 0.9
    masks[0, 0, 8:10, 4:10] = 0.4       # below 0.5: not part of the mask
    masks[1, 0] = 0.3                   # nothing above 0.5: None (the caller keeps the box)
    masks[2, 0, 20:30, 20:30] = 0.8
    valid = torch.ones(32, 32, dtype=torch.bool)
    valid[:, 25:] = False               # nodata / outside the scene
    window = Window(64, 96, 32, 32)
    polys = tile_mask_polygons(masks, valid, window, transform, np.array([2, 1, 0]))
    assert polys[1] is None
    first = map_polygon(transform, [(68, 100), (74, 100), (74, 104), (68, 104)])
    cut = map_polygon(transform, [(84, 116), (89, 116), (89, 126), (84, 126)])
    assert polys[2] is not None and polys[2].symmetric_difference(first).area == pytest.approx(0, abs=1e-6)
    assert polys[0] is not None and polys[0].symmetric_difference(cut).area == pytest.approx(0, abs=1e-6)


# -- payloads through the box merger ------------------------------------------------------------


def test_merger_makes_payloads_for_admitted_detections_only_and_keeps_them_with_their_boxes() -> None:
    merger = BoxMerger(200, 200, tile=128, overlap=56, score_threshold=0.3)
    asked: list[list[int]] = []

    def payload(index: np.ndarray) -> list[str]:
        asked.append(index.tolist())
        return [f"geom{k}" for k in index]

    # Tile at (0, 0): a whole object, a low score, and an object cut by the tile's right edge that
    # the next tile sees whole.
    merger.add(Window(0, 0, 128, 128), np.array([[80, 40, 90, 50], [30, 30, 40, 40], [100, 10, 128, 20]]),
               np.array([0.9, 0.1, 0.8]), np.array([0, 0, 0]), payload=payload)
    assert asked == [[0]]
    # Tile (72, 0): the cut object seen whole, and the first one again (the overlap) scoring lower.
    merger.add(Window(72, 0, 128, 128), np.array([[28, 10, 60, 20], [8, 40, 18, 50]]),
               np.array([0.85, 0.7]), np.array([0, 0]), payload=["whole", "duplicate"])
    result = merger.result()
    assert result.payload == ["geom0", "whole"]
    np.testing.assert_array_equal(result.boxes, [[80, 40, 90, 50], [100, 10, 132, 20]])
    with pytest.raises(DvisUsageError, match="payload for every tile"):
        other = BoxMerger(200, 200, tile=128, overlap=56)
        other.add(Window(0, 0, 128, 128), np.zeros((0, 4)), np.zeros(0), np.zeros(0), payload=[])
        other.add(Window(72, 0, 128, 128), np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    with pytest.raises(DvisUsageError, match="1 boxes and 2 payloads"):
        BoxMerger(200, 200, tile=128, overlap=56).add(Window(0, 0, 128, 128), np.array([[1, 1, 5, 5]]),
                                                      np.array([0.9]), np.array([0]), payload=["a", "b"])


# -- whole scenes -------------------------------------------------------------------------------


class MarkerInstances(nn.Module):
    """An instance "model": the pixels bright in band 1 are an object with that mask; pixels
    bright in band 3 only are an object whose mask came out empty (the box must be kept)."""

    def predict(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            boxes, masks = [], []
            for on, has_mask in ((img[0] > 2.0, True), ((img[2] > 2.0) & (img[0] <= 2.0), False)):
                ys, xs = torch.nonzero(on, as_tuple=True)
                if len(ys):
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    masks.append(on.float() if has_mask else torch.zeros_like(on, dtype=torch.float32))
            n = len(boxes)
            out.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                "scores": torch.tensor([0.99, 0.9][:n]), "labels": torch.ones(n, dtype=torch.int64),
                "masks": torch.stack(masks)[:, None] if n else torch.zeros(0, 1, *img.shape[1:]),
            })
        return out


def test_instance_masks_become_polygons_on_the_map_across_tile_seams(tmp_path: Path) -> None:
    src = data_file("geotiff", "RGB.byte.tif")
    scene = tmp_path / "markers.tif"
    with rasterio.open(src) as s:
        data, profile, transform = s.read(), s.profile, s.transform
    data[:] = np.minimum(data, 60)
    (rows, cols), outline = l_shape(300, 410)   # across the seam of the tiles at columns 288 and 384
    data[:, rows, cols] = 255
    data[2, 450:456, 500:506] = 255             # the object whose mask is empty
    with rasterio.open(scene, "w", **profile) as d:
        d.write(data)
    config = arch_config("tiny")
    config.task, config.classes, config.tile_size = "instance", ["marker"], 128
    loaded = LoadedTaskModel(MarkerInstances(), config, {"trunk": "test", "head": "test"}, "marker")
    out = tmp_path / "objects.gpkg"
    summary = detect_scene(loaded, scene, out, bands=[1, 2, 3],
                           opts=RunOptions(device="cpu", tile_size=128, overlap=32))
    assert summary["masks"] is True and summary["detections"] == 2 and summary["mask_polygons"] == 1
    found = gpd.read_file(out).sort_values("score", ascending=False)
    assert found.crs == "EPSG:32618"
    assert list(found.geometry_source) == ["mask", "box"]
    assert (found.x1.iloc[0], found.y1.iloc[0], found.x2.iloc[0], found.y2.iloc[0]) == (410, 300, 419, 309)
    expected = map_polygon(transform, outline)
    assert found.geometry.iloc[0].symmetric_difference(expected).area == pytest.approx(0, abs=1e-3)
    assert found.geometry.iloc[0].area == pytest.approx(45 * 300.04**2, rel=1e-4)
    square = map_polygon(transform, [(500, 450), (506, 450), (506, 456), (500, 456)])
    assert found.geometry.iloc[1].symmetric_difference(square).area == pytest.approx(0, abs=1e-3)


def test_detect_task_rule(tmp_path: Path) -> None:
    assert detect_task("tiny") == "detect"
    assert detect_task("tiny", masks=True) == "instance"
    inst = load_task_model("tiny", "instance", classes=["ship"], random_weights=True)
    save_checkpoint(inst.module.state_dict(), inst.config, tmp_path / "inst")
    assert detect_task(tmp_path / "inst") == "instance"      # an instance model gives masks anyway
    det = load_task_model("tiny", "detect", classes=["ship"], random_weights=True)
    save_checkpoint(det.module.state_dict(), det.config, tmp_path / "det")
    assert detect_task(tmp_path / "det") == "detect"
    with pytest.raises(DvisUsageError, match="no mask head"):
        detect_task(tmp_path / "det", masks=True)


@pytest.mark.slow
def test_cli_detect_masks_with_the_tiny_mask_rcnn(tmp_path: Path) -> None:
    scene = data_file("neon_trees", "OSBS_029.tif")
    out = tmp_path / "crowns.gpkg"
    # Random weights, except that the mask logits lean positive: a random mask head sits at
    # probability ~0.5, where whether any pixel passes the 0.5 threshold is a coin toss between
    # machines; +3 makes the mask path (mask → polygon) run every time.
    torch.manual_seed(0)
    inst = load_task_model("tiny", "instance", classes=["tree"], random_weights=True, tile_size=256)
    inst.module.maskrcnn.roi_heads.mask_predictor.mask_fcn_logits.bias.data.fill_(3.0)
    save_checkpoint(inst.module.state_dict(), inst.config, tmp_path / "inst")
    flags = ["-m", tmp_path / "inst", "--random-weights", "-q", "--tile-size", "256", "--overlap", "32"]
    # 2 × 2 tiles of 256 px over 400 × 400. Threshold 0: every proposal is a detection.
    run = dvis("detect", scene, "-o", out, "--masks", "--threshold", "0", "--max-detections", "25", *flags)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["task"] == "instance"
    first = summary["runs"][0]
    assert first["masks"] is True and first["tiles"] == 4
    crowns = gpd.read_file(out)
    assert len(crowns) == first["detections"] == 25
    assert first["mask_polygons"] >= 20, first  # nearly every detection has a mask polygon
    assert set(crowns.columns) >= {"class", "class_id", "score", "x1", "y1", "x2", "y2", "geometry_source"}
    assert int((crowns.geometry_source == "mask").sum()) == first["mask_polygons"]
    with rasterio.open(scene) as ds:
        transform, crs = ds.transform, ds.crs
    assert crowns.crs == crs and crowns.geometry.is_valid.all()
    assert set(crowns.geom_type) <= {"Polygon"}
    for row in crowns.itertuples():
        # A mask lies within its box, give or take the paste margin of Mask R-CNN (±~4 %).
        pad = 0.1 * max(row.x2 - row.x1, row.y2 - row.y1) + 2
        near = map_polygon(transform, [(row.x1 - pad, row.y1 - pad), (row.x2 + pad, row.y1 - pad),
                                       (row.x2 + pad, row.y2 + pad), (row.x1 - pad, row.y2 + pad)])
        assert near.buffer(1e-6).contains(row.geometry)
    scene_box = box(*map_polygon(transform, [(0, 0), (400, 0), (400, 400), (0, 400)]).bounds)
    assert crowns.geometry.within(scene_box).all()
