"""Georeferenced training data: a real GeoTIFF (NEON OSBS_029, EPSG:32617) and its tree boxes
written as map polygons in a GeoPackage."""

from __future__ import annotations

import csv
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from dynamicvis_cli.data.dataset import TaskDataset
from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.errors import DatasetError
from tests.train.fixtures import make_geo_trees, shared


def csv_boxes() -> np.ndarray:
    with open(shared("neon_trees", "OSBS_029.csv")) as f:
        return np.array([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in csv.DictReader(f)])


def test_vector_labels_come_back_as_pixel_boxes_per_chip(tmp_path: Path) -> None:
    spec = open_dataset(make_geo_trees(tmp_path, chip=200), "detect")
    assert spec.format == "geo" and spec.classes == ["tree"]
    assert [r.region for r in spec.records] == [(0, 0, 200, 200), (200, 0, 200, 200), (0, 200, 200, 200),
                                                (200, 200, 200, 200)]
    found = np.unique(np.concatenate([r.boxes for r in spec.records]).round(6), axis=0)
    assert np.allclose(found, np.unique(csv_boxes(), axis=0))  # every box, back in pixels, exactly


def test_segment_masks_are_rasterised_with_a_background_class(tmp_path: Path) -> None:
    spec = open_dataset(make_geo_trees(tmp_path, chip=200), "segment")
    assert spec.classes == ["background", "tree"] and spec.background == 0
    ds = TaskDataset(spec, tile_size=200, bands=[1, 2, 3], mean=[0.5] * 3, std=[0.2] * 3, augment=None)
    mask = ds[0]["mask"].numpy()
    x0, y0, x1, y1 = (int(v) for v in csv_boxes()[0])
    if x1 <= 200 and y1 <= 200:
        assert (mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1] == 1).all()
    assert set(np.unique(mask)) <= {0, 1, 255} and (mask == 0).any()


def test_geo_errors_name_the_file(tmp_path: Path) -> None:
    yaml_path = make_geo_trees(tmp_path, chip=200)
    with pytest.raises(DatasetError, match="no class column 'class'"):
        open_dataset(yaml_path, "detect", geo={"class_column": "class"})
    with pytest.raises(DatasetError, match="class 'tree' is not in the class list"):
        open_dataset(yaml_path, "detect", classes=["car"])
    far = gpd.read_file(tmp_path / "trees.gpkg")
    far.geometry = far.geometry.translate(1e5, 0)
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(DatasetError, match="far.gpkg: no labels fall on the scenes"):
        open_dataset(yaml_path, "detect", geo={"labels": str(tmp_path / "far.gpkg")})
    with pytest.raises(DatasetError, match="label file does not exist"):
        open_dataset(yaml_path, "detect", geo={"labels": "missing.gpkg"})
    plain = shared("dubai", "Tile 1", "images", "image_part_001.jpg")
    with pytest.raises(DatasetError, match="scene has no CRS"):
        open_dataset(yaml_path, "detect", geo={"scenes": [str(plain)]})
