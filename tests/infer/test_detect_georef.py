"""A box at a known pixel comes out at the right place on Earth (UTM, Web Mercator, custom WKT).

The scene is a real raster from ../shared/data/geotiff with a bright square painted at a known
pixel; the "model" is a marker detector (a threshold on the first band), so the position it
reports is known exactly and the test checks the whole chain: tiling → tile-to-scene shift →
seam merge → affine transform → CRS → the GeoJSON writer's reprojection to lon/lat.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from pyproj import Transformer
from torch import nn

from dynamicvis_cli.checkpoints.registry import arch_config
from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.infer.context import RunOptions
from dynamicvis_cli.infer.detect import detect_scene
from tests.conftest import SHARED

MARKER = 6  # px


class MarkerDetector(nn.Module):
    """Boxes around pixels whose first band is far above the rest (the painted square)."""

    def predict(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            ys, xs = torch.nonzero(img[0] > 2.0, as_tuple=True)
            if len(ys):
                box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
                out.append({"boxes": box, "scores": torch.tensor([0.99]), "labels": torch.tensor([1])})
            else:
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)})
        return out


def marker_scene(name: str, tmp_path: Path, row: int, col: int) -> Path:
    src = SHARED / "data" / "geotiff" / name
    if not src.exists():
        pytest.skip(f"{src} not found (needs ../shared/data)")
    out = tmp_path / name
    with rasterio.open(src) as s:
        data = s.read()
        profile = s.profile
    data[:] = np.minimum(data, 60)                # keep the real scene, but darker than the marker
    data[:, row:row + MARKER, col:col + MARKER] = 255
    with rasterio.open(out, "w", **profile) as d:
        d.write(data)
    return out


@pytest.mark.parametrize(
    ("name", "row", "col"),
    [
        ("RGB.byte.tif", 300, 420),                 # UTM 18N
        ("rgb1_fake_nir_epsg3857.tif", 250, 250),   # Web Mercator, 1 band
        ("goes.tif", 270, 140),                     # custom geostationary WKT
    ],
)
@pytest.mark.parametrize("tile", [128, 200])
def test_box_lands_at_the_right_lon_lat(name: str, row: int, col: int, tile: int, tmp_path: Path) -> None:
    scene = marker_scene(name, tmp_path, row, col)
    with rasterio.open(scene) as ds:
        bands = [1, 1, 1] if ds.count == 1 else [1, 2, 3]
        crs, transform = ds.crs, ds.transform
    config = arch_config("tiny")
    config.task, config.classes, config.tile_size = "detect", ["marker"], tile
    loaded = LoadedTaskModel(MarkerDetector(), config, {"trunk": "test", "head": "test"}, "marker")
    out = tmp_path / "boxes.geojson"
    summary = detect_scene(loaded, scene, out, bands=bands, opts=RunOptions(device="cpu", tile_size=tile,
                                                                            overlap=tile // 4))
    assert summary["detections"] == 1  # seen by several tiles, merged into one
    found = gpd.read_file(out)
    assert found.crs.to_epsg() == 4326
    assert (found.x1.iloc[0], found.y1.iloc[0]) == (col, row)
    # lon/lat back to the scene's CRS and pixels: the corners of the painted square.
    lons, lats = np.array(found.geometry.iloc[0].exterior.coords).T
    xs, ys = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lons, lats)
    cols, rows = ~transform * (np.asarray(xs), np.asarray(ys))
    assert (cols.min(), rows.min(), cols.max(), rows.max()) == pytest.approx(
        (col, row, col + MARKER, row + MARKER), abs=0.01)


class TwoColourDetector(nn.Module):
    """Class 1 ("red") where the first band is bright, class 2 ("green") where the second is."""

    def predict(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x:
            boxes, labels = [], []
            for label, b in ((1, 0), (2, 1)):
                ys, xs = torch.nonzero((img[b] > 2.0) & (img[1 - b] < 0.5), as_tuple=True)
                if len(ys):
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    labels.append(label)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.full((len(labels),), 0.9), "labels": torch.tensor(labels, dtype=torch.int64)})
        return out


@pytest.mark.parametrize(("keep", "expected"), [(None, ["green", "red"]), (["green"], ["green"]),
                                                (["red"], ["red"])])
def test_keep_classes_drops_the_others(keep: list[str] | None, expected: list[str], tmp_path: Path) -> None:
    src = SHARED / "data" / "geotiff" / "RGB.byte.tif"
    if not src.exists():
        pytest.skip(f"{src} not found (needs ../shared/data)")
    scene = tmp_path / "two.tif"
    with rasterio.open(src) as s:
        data, profile = np.minimum(s.read(), 30), s.profile
    data[0, 100:108, 100:108] = 255  # red square
    data[1, 300:308, 400:408] = 255  # green square
    with rasterio.open(scene, "w", **profile) as d:
        d.write(data)
    config = arch_config("tiny")
    config.task, config.classes, config.tile_size = "detect", ["red", "green"], 128
    loaded = LoadedTaskModel(TwoColourDetector(), config, {"trunk": "test", "head": "test"}, "two")
    out = tmp_path / "boxes.gpkg"
    summary = detect_scene(loaded, scene, out, bands=[1, 2, 3], keep_classes=keep,
                           opts=RunOptions(device="cpu", tile_size=128, overlap=32))
    found = gpd.read_file(out)
    assert sorted(found["class"]) == expected
    assert sorted(summary["per_class"]) == sorted(set(expected) if keep else ["red", "green"])
    assert sum(summary["per_class"].values()) == summary["detections"] == len(expected)
