"""Chips of real scenes: windows, footprints at known positions, dates, source expansion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.retrieval.chips import (
    acquisition_date,
    chip_starts,
    expand_sources,
    footprints,
    plan_chips,
    raster_info,
)
from tests.retrieval.conftest import data_file


def test_chip_starts_follow_the_stride_and_end_at_the_edge() -> None:
    assert chip_starts(791, 128, 128) == [(0, 128), (128, 128), (256, 128), (384, 128), (512, 128),
                                          (640, 128), (663, 128)]
    assert chip_starts(256, 128, 128) == [(0, 128), (128, 128)]
    assert chip_starts(300, 128, 64)[-1] == (172, 128)
    assert chip_starts(300, 128, 200) == [(0, 128)]  # sparse: only grid positions that fit
    assert chip_starts(71, 128, 128) == [(0, 71)]  # an axis shorter than the chip: the whole axis
    windows = plan_chips(718, 791, 128, 128)
    assert len(windows) == 6 * 7 and all(w.width == w.height == 128 for w in windows)
    with pytest.raises(DvisUsageError):
        chip_starts(100, 0, 1)


def test_footprints_of_rgb_byte_chips_match_rasterio(rgb_byte_tif: Path) -> None:
    info = raster_info(rgb_byte_tif)
    with rasterio.open(rgb_byte_tif) as ds:
        transform, crs = ds.transform, ds.crs
    assert crs.to_epsg() == 32618
    # the top-left chip starts at the scene's known corner (manifest: 101985, 2826915)
    native, _ = footprints(Window(0, 0, 128, 128), info.transform, info.crs)
    assert native.bounds[0] == pytest.approx(101985.0) and native.bounds[3] == pytest.approx(2826915.0)
    for window in (Window(0, 0, 128, 128), Window(384, 256, 128, 128), Window(663, 590, 128, 128)):
        native, lonlat = footprints(window, info.transform, info.crs)
        assert native.bounds == pytest.approx(window_bounds(window, transform), abs=1e-6)
        assert lonlat is not None
        # the corners, reprojected by GDAL, are vertices of the WGS84 footprint
        xs = [window_bounds(window, transform)[i] for i in (0, 2, 2, 0)]
        ys = [window_bounds(window, transform)[i] for i in (3, 3, 1, 1)]
        lon, lat = warp_transform(crs, "EPSG:4326", xs, ys)
        ring = np.array(lonlat.exterior.coords)
        for x, y in zip(lon, lat):
            assert np.hypot(ring[:, 0] - x, ring[:, 1] - y).min() < 1e-7
        assert native.area == pytest.approx(128 * 128 * abs(transform.a * transform.e))
    # the scene lies in the Bahamas/Florida strait area, west of -76 and north of 23 degrees
    _, scene = footprints(Window(0, 0, 791, 718), info.transform, info.crs)
    assert scene is not None
    x0, y0, x1, y1 = scene.bounds
    assert -79.5 < x0 < x1 < -76.0 and 23.0 < y0 < y1 < 26.0


def test_footprint_of_a_rotated_raster_without_crs() -> None:
    path = data_file("geotiff", "rotated.tif")
    info = raster_info(path)
    native, lonlat = footprints(Window(0, 0, info.width, info.height), info.transform, info.crs)
    assert lonlat is None  # no CRS: pixel/map coordinates only
    t = info.transform
    corners = [t @ (0, 0), t @ (info.width, 0), t @ (info.width, info.height), t @ (0, info.height)]
    ring = np.array(native.exterior.coords)
    for x, y in corners:
        assert np.hypot(ring[:, 0] - x, ring[:, 1] - y).min() < 1e-9


def test_acquisition_dates_from_tags_and_names() -> None:
    assert acquisition_date(Path("naip_2009.tif"), {}) == "2009"
    assert acquisition_date(Path("S2A_20200615_T18.tif"), {}) == "2020-06-15"
    assert acquisition_date(Path("x.tif"), {"ACQUISITIONDATETIME": "2019-03-04T10:00:00Z"}) == "2019-03-04"
    assert acquisition_date(Path("scene_123456.tif"), {}) is None
    assert raster_info(data_file("timeseries", "naip_2014.tif")).acquired == "2014"


def test_expand_sources_walks_folders_and_globs(tmp_path: Path, dubai_chips: Path) -> None:
    found = expand_sources([str(dubai_chips)])
    assert len(found) == 16 and all(p.suffix == ".png" and p.is_absolute() for p in found)
    assert expand_sources([str(dubai_chips / "*" / "*.png")]) == found
    (tmp_path / "empty").mkdir()
    with pytest.raises(DvisUsageError, match="no raster file"):
        expand_sources([str(tmp_path / "empty")])
    with pytest.raises(DvisUsageError, match="no file matches"):
        expand_sources([str(tmp_path / "*.tif")])
