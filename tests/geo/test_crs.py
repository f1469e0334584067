"""Pixel ↔ map ↔ lon/lat, grid comparison, and warping one raster onto another's grid."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.transform
import rasterio.warp
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisUsageError, GridMismatchError
from dynamicvis_cli.geo.crs import (
    aligned,
    check_same_grid,
    grid_differences,
    map_to_pixel,
    pixel_to_map,
    to_lonlat,
)
from dynamicvis_cli.geo.read import RasterSource
from tests.geo import shared_file


@dataclass
class Grid:
    crs: CRS | None
    transform: Affine
    width: int
    height: int


@pytest.fixture
def path_rgb_byte_tif() -> Path:
    return shared_file("geotiff/RGB.byte.tif")


@pytest.fixture
def path_shade_tif() -> Path:
    return shared_file("geotiff/shade.tif")


@pytest.fixture
def path_source1_tif() -> Path:
    return shared_file("rio_hist/source1.tif")


@pytest.fixture
def path_reference1_tif() -> Path:
    return shared_file("rio_hist/reference1.tif")


def grid_of(path: Path) -> Grid:
    with rasterio.open(path) as ds:
        return Grid(ds.crs, ds.transform, ds.width, ds.height)


# -- pixel ↔ map ↔ lon/lat ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["geotiff/RGB.byte.tif", "geotiff/rotated.tif", "geotiff/goes.tif"]
)
def test_pixel_to_map_matches_rasterio(name: str) -> None:
    transform = grid_of(shared_file(name)).transform
    rows, cols = np.meshgrid(np.arange(0, 15, 3), np.arange(0, 10, 2), indexing="ij")
    xs, ys = pixel_to_map(transform, cols + 0.5, rows + 0.5)
    ex, ey = rasterio.transform.xy(transform, rows.ravel(), cols.ravel(), offset="center")
    np.testing.assert_allclose(xs.ravel(), ex, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ys.ravel(), ey, rtol=0, atol=1e-6)
    assert xs.shape == rows.shape
    # Corners as given: (0, 0) is the transform's origin.
    x0, y0 = pixel_to_map(transform, [0], [0])
    assert (x0[0], y0[0]) == (transform.c, transform.f)


@pytest.mark.parametrize("name", ["geotiff/RGB.byte.tif", "geotiff/rotated.tif"])
def test_map_to_pixel_inverts(name: str) -> None:
    transform = grid_of(shared_file(name)).transform
    cols = np.array([0.0, 0.5, 7.25, 9.99])
    rows = np.array([0.0, 14.5, 3.75, 0.01])
    back_c, back_r = map_to_pixel(transform, *pixel_to_map(transform, cols, rows))
    np.testing.assert_allclose(back_c, cols, atol=1e-9)
    np.testing.assert_allclose(back_r, rows, atol=1e-9)


@pytest.mark.parametrize(
    "name",
    ["geotiff/RGB.byte.tif", "geotiff/shade.tif", "geotiff/goes.tif", "rio_hist/reference1.tif"],
)
def test_to_lonlat_matches_gdal(name: str) -> None:
    grid = grid_of(shared_file(name))
    cols = np.linspace(0.5, grid.width - 0.5, 7)
    rows = np.linspace(0.5, grid.height - 0.5, 7)
    # The centre band of the scene: goes.tif's corners are off the Earth's disk.
    xs, ys = pixel_to_map(grid.transform, cols, rows * 0 + grid.height / 2)
    lon, lat = to_lonlat(grid.crs, xs, ys)
    # GDAL/OSR (rasterio.warp) as the independent implementation, in x=lon, y=lat order.
    elon, elat = rasterio.warp.transform(grid.crs, "EPSG:4326", xs.tolist(), ys.tolist())
    np.testing.assert_allclose(lon, elon, atol=1e-9)
    np.testing.assert_allclose(lat, elat, atol=1e-9)
    assert np.all(np.abs(lon) <= 180) and np.all(np.abs(lat) <= 90)


def test_rgb_byte_is_in_the_bahamas(path_rgb_byte_tif: Path) -> None:
    grid = grid_of(path_rgb_byte_tif)
    lon, lat = to_lonlat(
        grid.crs, *pixel_to_map(grid.transform, [grid.width / 2], [grid.height / 2])
    )
    assert -79 < lon[0] < -76 and 23 < lat[0] < 26


def test_to_lonlat_without_crs() -> None:
    with pytest.raises(DvisUsageError, match="without a CRS"):
        to_lonlat(None, [0.0], [0.0])


# -- same grid ----------------------------------------------------------------------------------


def test_same_file_same_grid(path_rgb_byte_tif: Path) -> None:
    with RasterSource(path_rgb_byte_tif) as a, RasterSource(path_rgb_byte_tif) as b:
        assert grid_differences(a, b) == []
        check_same_grid("a.tif", a, "b.tif", b)


def test_identical_grids_of_a_real_time_series() -> None:
    a = grid_of(shared_file("timeseries/landsat_pucallpa_1985.tif"))
    b = grid_of(shared_file("timeseries/landsat_pucallpa_2020.tif"))
    assert grid_differences(a, b) == []


def test_every_difference_is_named(path_rgb_byte_tif: Path, path_shade_tif: Path) -> None:
    diffs = grid_differences(grid_of(path_rgb_byte_tif), grid_of(path_shade_tif))
    assert diffs[0] == "CRS EPSG:32618 vs EPSG:3857"
    assert diffs[1] == "shape 791x718 vs 1024x1024"
    assert diffs[2] == "pixel size 300.038x300.042 vs 9.55463"
    assert diffs[3].startswith("origin (101985, 2826915) vs (-11858134.8")


def test_naip_dates_differ_by_a_row_and_metres() -> None:
    a = grid_of(shared_file("timeseries/naip_2009.tif"))
    b = grid_of(shared_file("timeseries/naip_2014.tif"))
    assert grid_differences(a, b) == [
        "shape 934x724 vs 934x723",
        "origin (485900, 5209247) vs (485900, 5209245)",
    ]


@pytest.mark.parametrize(
    ("shift", "same"), [(1e-12, True), (5e-10, True), (1e-6, False), (0.5, False)]
)
def test_transform_tolerance_is_a_fraction_of_a_pixel(
    path_rgb_byte_tif: Path, shift: float, same: bool
) -> None:
    a = grid_of(path_rgb_byte_tif)
    t = a.transform
    moved = Grid(a.crs, Affine(t.a, t.b, t.c + shift * t.a, t.d, t.e, t.f), a.width, a.height)
    assert (grid_differences(a, moved) == []) is same
    if not same:
        assert grid_differences(a, moved)[0].startswith("origin")


def test_pixel_size_change_shows_at_the_far_corner(path_rgb_byte_tif: Path) -> None:
    a = grid_of(path_rgb_byte_tif)
    t = a.transform
    # 1e-9 relative in the pixel size moves the far corner by ~8e-7 pixel: a different grid.
    b = Grid(a.crs, Affine(t.a * (1 + 1e-9), 0, t.c, 0, t.e, t.f), a.width, a.height)
    assert [d.split(" ")[0] for d in grid_differences(a, b)] == ["pixel"]


def test_check_same_grid_raises_with_both_paths(
    path_source1_tif: Path, path_reference1_tif: Path
) -> None:
    with pytest.raises(GridMismatchError) as info:
        check_same_grid(
            path_reference1_tif,
            grid_of(path_reference1_tif),
            path_source1_tif,
            grid_of(path_source1_tif),
        )
    message = str(info.value)
    assert info.value.exit_code == 3
    assert message.startswith(f"{path_source1_tif}: not on the grid of {path_reference1_tif}")
    for part in (
        "CRS +proj=merc",
        "vs EPSG:26912",
        "shape 246x329 vs 546x726",
        "vs 10;",
        "--align",
    ):
        assert part in message


# -- alignment ----------------------------------------------------------------------------------


def lookup(onto: Grid, src: Grid, step: int = 3) -> tuple[np.ndarray, ...]:
    """Pixel centres of ``onto`` (every ``step``-th) located independently (pyproj) in ``src``.

    Returns rows, cols (in ``onto``), the containing src col/row, and a flag for centres
    clear of src's pixel edges by 0.2 px (where GDAL's approximate transformer is exact).
    """
    rows, cols = np.mgrid[0 : onto.height : step, 0 : onto.width : step]
    xs, ys = pixel_to_map(onto.transform, cols + 0.5, rows + 0.5)
    assert onto.crs is not None and src.crs is not None
    to_src = Transformer.from_crs(onto.crs.to_wkt(), src.crs.to_wkt(), always_xy=True)
    sc, sr = map_to_pixel(src.transform, *to_src.transform(xs, ys))
    fc, fr = np.floor(sc).astype(int), np.floor(sr).astype(int)
    clear = np.minimum.reduce([sc - fc, 1 - (sc - fc), sr - fr, 1 - (sr - fr)]) > 0.2
    return rows, cols, fc, fr, clear


def test_aligned_lands_on_the_exact_grid(path_source1_tif: Path, path_reference1_tif: Path) -> None:
    with (
        RasterSource(path_reference1_tif) as ref,
        RasterSource(path_source1_tif) as src,
        aligned(src, onto=ref) as warped,
    ):
        assert grid_differences(warped, ref) == []
        assert warped.crs == ref.crs and warped.transform == ref.transform
        assert (warped.count, warped.dtype) == (3, "uint8")
        data, valid = warped.read(Window(0, 0, ref.width, ref.height), [1, 2, 3])
    assert data.shape == (3, ref.height, ref.width)
    assert valid.mean() > 0.95  # the two images cover the same ground
    assert data[:, valid].mean() > 10


def test_aligned_nearest_samples_the_right_pixels(
    path_source1_tif: Path, path_reference1_tif: Path
) -> None:
    """Each warped pixel equals the source pixel under its centre, located independently."""
    onto, src = grid_of(path_reference1_tif), grid_of(path_source1_tif)
    with RasterSource(path_source1_tif) as source, rasterio.open(path_source1_tif) as ds:
        with aligned(source, onto=onto, resampling="nearest") as warped:
            data, valid = warped.read(Window(0, 0, onto.width, onto.height), [2])
        raw = ds.read(2)
    rows, cols, fc, fr, clear = lookup(onto, src, step=2)
    inside = (fc >= 0) & (fc < src.width) & (fr >= 0) & (fr < src.height)
    assert inside.mean() > 0.95
    check = inside & clear
    assert check.sum() > 2000
    np.testing.assert_array_equal(data[0][rows[check], cols[check]], raw[fr[check], fc[check]])
    assert valid[rows[check], cols[check]].all()


def test_aligned_marks_ground_the_source_does_not_cover(path_source1_tif: Path) -> None:
    # source1 has no nodata and no mask (every pixel valid): the 20 px border of a grid larger
    # than it must still come out invalid, not as black pixels.
    with RasterSource(path_source1_tif) as src:
        t = src.transform
        wider = Grid(
            src.crs,
            Affine(t.a, t.b, t.c - 20 * t.a, t.d, t.e, t.f - 20 * t.e),
            src.width + 40,
            src.height + 40,
        )
        with aligned(src, onto=wider, resampling="bilinear") as warped:
            data, valid = warped.read(Window(0, 0, wider.width, wider.height), [1, 2, 3])
    border = np.ones(valid.shape, dtype=bool)
    border[20:-20, 20:-20] = False
    assert not valid[border].any() and not data[:, border].any()
    assert valid[22:-22, 22:-22].all()


def test_aligned_footprint_is_the_source_footprint(
    path_source1_tif: Path, path_reference1_tif: Path
) -> None:
    # reference1 onto source1's grid: centres of source1's edge pixels that fall just beyond
    # reference1 must be invalid, the others valid.
    onto, ref = grid_of(path_source1_tif), grid_of(path_reference1_tif)
    with (
        RasterSource(path_reference1_tif) as src,
        aligned(src, onto=onto, resampling="nearest") as warped,
    ):
        _, valid = warped.read(Window(0, 0, onto.width, onto.height), [1, 2, 3])
    rows, cols, fc, fr, clear = lookup(onto, ref, step=1)
    inside = (fc >= 0) & (fc < ref.width) & (fr >= 0) & (fr < ref.height)
    assert 0 < inside[clear].mean() < 1  # both cases occur
    np.testing.assert_array_equal(valid[rows[clear], cols[clear]], inside[clear])


# rasterio's own calculate_default_transform still multiplies Affines with `*`.
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_aligned_carries_the_nodata_collar(path_rgb_byte_tif: Path) -> None:
    # RGB.byte.tif (UTM, nodata 0 collar) onto a Web Mercator grid of the same ground.
    src = grid_of(path_rgb_byte_tif)
    assert src.crs is not None
    west, south, east, north = rasterio.transform.array_bounds(src.height, src.width, src.transform)
    transform, width, height = rasterio.warp.calculate_default_transform(
        src.crs, "EPSG:3857", src.width, src.height, west, south, east, north
    )
    onto = Grid(CRS.from_epsg(3857), transform, int(width), int(height))
    with RasterSource(path_rgb_byte_tif) as source, rasterio.open(path_rgb_byte_tif) as ds:
        with aligned(source, onto=onto, resampling="nearest") as warped:
            data, valid = warped.read(Window(0, 0, onto.width, onto.height), [1, 2, 3])
        mask = ds.dataset_mask() > 0
    rows, cols, fc, fr, clear = lookup(onto, src)
    inside = (fc >= 0) & (fc < src.width) & (fr >= 0) & (fr < src.height)
    check = clear & inside
    expected = mask[fr[check], fc[check]]
    assert 0.2 < expected.mean() < 0.9  # collar and scene both sampled
    np.testing.assert_array_equal(valid[rows[check], cols[check]], expected)
    assert not data[:, ~valid].any()


def test_aligned_source_pickles(path_source1_tif: Path, path_reference1_tif: Path) -> None:
    window = Window(100, 100, 40, 30)
    with (
        RasterSource(path_reference1_tif) as ref,
        RasterSource(path_source1_tif) as src,
        aligned(src, onto=ref, resampling="cubic") as warped,
    ):
        copy = pickle.loads(pickle.dumps(warped))
        try:
            assert grid_differences(copy, ref) == []
            for a, b in zip(warped.read(window, [1]), copy.read(window, [1])):
                np.testing.assert_array_equal(a, b)
        finally:
            copy.close()


def test_aligned_rejects_unknown_resampling(
    path_source1_tif: Path, path_reference1_tif: Path
) -> None:
    with (
        RasterSource(path_reference1_tif) as ref,
        RasterSource(path_source1_tif) as src,
        pytest.raises(DvisUsageError, match="unknown resampling 'bicubic'.*nearest.*bilinear"),
    ):
        aligned(src, onto=ref, resampling="bicubic")


def test_aligned_needs_a_crs(path_reference1_tif: Path) -> None:
    with (
        RasterSource(shared_file("geotiff/float_nan.tif")) as nocrs,
        RasterSource(path_reference1_tif) as ref,
    ):
        with pytest.raises(DvisUsageError, match="float_nan.tif: raster has no CRS"):
            aligned(nocrs, onto=ref)
        with pytest.raises(DvisUsageError, match="target grid has no CRS"):
            aligned(ref, onto=nocrs)
