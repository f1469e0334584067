"""The scene commands as users run them: real rasters from ../shared/data, real subprocesses.

Models are the tiny architecture with random weights (``--random-weights``): these tests check
the engine, files, coordinates and errors, not accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

from tests.conftest import SHARED

DATA = SHARED / "data"
TINY = ["-m", "tiny", "--random-weights", "-q", "--tile-size", "128"]


def data_file(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (needs ../shared/data)")
    return path


def dvis(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamicvis_cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_segment_writes_a_cog_on_the_input_grid_and_polygons(tmp_path: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    src = data_file("geotiff", "RGB.byte.tif")
    out, vec, png = tmp_path / "lc.tif", tmp_path / "lc.gpkg", tmp_path / "lc.png"
    run = dvis("segment", src, "-o", out, "--vector", vec, "--quicklook", png, "--classes", "water,land", *TINY)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["random_weights"] is True and summary["runs"][0]["crs"] == "EPSG:32618"
    valid, errors, _ = cog_validate(str(out), strict=True)
    assert valid, errors
    with rasterio.open(out) as o, rasterio.open(src) as i:
        assert (o.crs, o.transform, o.shape) == (i.crs, i.transform, i.shape)
        assert o.nodata == 255 and o.tags()["classes"] == "water,land"
        classes = o.read(1)
        nodata_in = ~i.dataset_mask().astype(bool)
    assert (classes[nodata_in] == 255).all() and (classes[~nodata_in] < 2).all()
    polys = gpd.read_file(vec)
    assert len(polys) == summary["runs"][0]["polygons"] and polys.crs == "EPSG:32618"
    assert summary["runs"][0]["quicklook"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not leftovers(tmp_path)


def test_change_refuses_different_grids_then_aligns(tmp_path: Path) -> None:
    a, b = data_file("rio_hist", "source1.tif"), data_file("rio_hist", "reference1.tif")
    out = tmp_path / "change.tif"
    refused = dvis("change", a, b, "-o", out, *TINY)
    assert refused.returncode == 3
    assert "CRS EPSG:26912 vs" in refused.stderr and "--align" in refused.stderr
    assert not out.exists()
    aligned = dvis("change", a, b, "-o", out, "--align", "--resampling", "nearest", *TINY)
    assert aligned.returncode == 0, aligned.stderr
    assert json.loads(aligned.stdout)["runs"][0]["aligned"] is True
    with rasterio.open(out) as o, rasterio.open(a) as first:
        assert (o.crs, o.transform, o.shape) == (first.crs, first.transform, first.shape)


def test_classify_grid_and_chips(tmp_path: Path) -> None:
    scene = data_file("geotiff", "RGB.byte.tif")
    grid = tmp_path / "grid.geojson"
    run = dvis("classify", scene, "--grid", 256, "-o", grid, "--classes", "a,b", *TINY[:-2])
    assert run.returncode == 0, run.stderr
    cells = gpd.read_file(grid)
    skipped = json.loads(run.stdout)["runs"][0]["cells_skipped_nodata"]
    assert len(cells) + skipped == 3 * 4 and skipped >= 1  # the scene's nodata corners
    assert set(cells["class"]) <= {"a", "b"}
    assert cells.total_bounds[0] == pytest.approx(-78.96, abs=0.1)  # lon/lat (RFC 7946)
    chips = sorted(data_file("aerial_coco").glob("*.jpg"))[:2]
    table = tmp_path / "labels.csv"
    run = dvis("classify", *chips, "-o", table, "--classes", "a,b,c", *TINY[:-2])
    assert run.returncode == 0, run.stderr
    assert len(table.read_text().splitlines()) == 1 + len(chips)


def test_detect_many_inputs_with_out_dir_and_skip_existing(tmp_path: Path) -> None:
    pattern = str(data_file("neon_trees") / "*.tif")
    run = dvis("detect", pattern, "--out-dir", tmp_path, "--classes", "tree", "--threshold", "0.2", *TINY)
    assert run.returncode == 0, run.stderr
    outs = sorted(tmp_path.glob("*.geojson"))
    assert len(outs) == 2
    again = dvis("detect", pattern, "--out-dir", tmp_path, "--classes", "tree", "--skip-existing", *TINY)
    assert again.returncode == 0 and len(json.loads(again.stdout)["skipped_existing"]) == 2


@pytest.fixture
def truncated_tif(tmp_path: Path) -> Path:
    src = data_file("geotiff", "RGB.byte.tif")
    path = tmp_path / "truncated.tif"
    path.write_bytes(src.read_bytes()[:40_000])
    return path


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("not_a_raster", 1, "not a readable raster"),
        ("truncated", 1, "truncated.tif"),
        ("band_out_of_range", 2, "out of range"),
        ("empty_glob", 2, "no file matches"),
        ("no_crs_geojson", 2, "--pixel-coords"),
        ("random_not_asked", 2, "--random-weights"),
        ("output_exists", 2, "--overwrite"),
        ("tile_too_small_for_detection", 2, "at least 128 px"),
    ],
)
def test_bad_input(case: str, code: int, message: str, tmp_path: Path, truncated_tif: Path) -> None:
    rgb = data_file("geotiff", "RGB.byte.tif")
    out = tmp_path / "out.geojson"
    args: list[object] = ["detect", rgb, "-o", out, "--classes", "x", *TINY]
    if case == "not_a_raster":
        text = tmp_path / "notes.tif"
        text.write_text("hello")
        args[1] = text
    elif case == "truncated":
        args[1] = truncated_tif
    elif case == "band_out_of_range":
        args += ["--bands", "1,2,7"]
    elif case == "empty_glob":
        args[1] = str(tmp_path / "*.jp2")
    elif case == "no_crs_geojson":
        plain = tmp_path / "plain.tif"
        with rasterio.open(rgb) as s:
            profile = s.profile | {"crs": None, "transform": rasterio.Affine.identity()}
            with rasterio.open(plain, "w", **profile) as d:
                d.write(s.read())
        args[1] = plain
    elif case == "random_not_asked":
        args.remove("--random-weights")
    elif case == "output_exists":
        out.write_text("{}")
    elif case == "tile_too_small_for_detection":
        args += ["--tile-size", "64"]
    run = dvis(*args)
    assert run.returncode == code, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert case == "output_exists" or not out.exists()
    assert not leftovers(tmp_path)


def test_pixel_coords_on_a_raster_without_crs(tmp_path: Path) -> None:
    rgb = data_file("geotiff", "RGB.byte.tif")
    plain = tmp_path / "plain.tif"
    with rasterio.open(rgb) as s:
        with rasterio.open(plain, "w", **(s.profile | {"crs": None, "transform": rasterio.Affine.identity()})) as d:
            d.write(s.read())
    out = tmp_path / "boxes.gpkg"
    run = dvis("detect", plain, "-o", out, "--classes", "x", "--pixel-coords", "--threshold", "0.05", *TINY)
    assert run.returncode == 0, run.stderr
    boxes = gpd.read_file(out)
    assert boxes.crs is None
    if len(boxes):
        assert boxes.total_bounds[2] <= 791 and boxes.total_bounds[3] <= 718


def test_all_nodata_scene_writes_an_all_nodata_raster(tmp_path: Path) -> None:
    src = data_file("geotiff", "all-nodata.tif")
    out = tmp_path / "seg.tif"
    run = dvis("segment", src, "-o", out, "--classes", "a,b", "--bands", "1,1,1", *TINY)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)["runs"][0]
    assert summary["tiles"] == summary["tiles_skipped_nodata"] >= 1
    with rasterio.open(out) as o:
        assert (o.read(1) == 255).all()


def test_uint16_rgba_with_percentile_stretch(tmp_path: Path) -> None:
    src = data_file("geotiff", "RGBA.uint16.tif")
    out = tmp_path / "seg.tif"
    run = dvis("segment", src, "-o", out, "--classes", "a,b", "--stretch", *TINY)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["runs"][0]["bands"] == [1, 2, 3]  # alpha is a mask, not a colour
    with rasterio.open(out) as o, rasterio.open(src) as i:
        assert (o.crs, o.transform, o.shape) == (i.crs, i.transform, i.shape)
        alpha_off = i.read(4) == 0
        assert (o.read(1)[alpha_off] == 255).all()
