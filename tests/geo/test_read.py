"""RasterSource: windows past the edge, validity masks, bands, errors; normalise; stretch."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from dynamicvis_cli.errors import (
    BandIndexError,
    DvisUsageError,
    InputNotFoundError,
    RasterReadError,
)
from dynamicvis_cli.geo.read import RasterSource, normalise, percentile_stretch, resolve_bands
from tests.geo import DATA, shared_file

GEOTIFFS = [
    "RGB.byte.tif",
    "RGBA.uint16.tif",
    "all-nodata.tif",
    "float_nan.tif",
    "goes.tif",
    "rgb1_fake_nir_epsg3857.tif",
    "rotated.tif",
    "shade.tif",
    "world.rgb.tif",
]


@pytest.fixture
def path_rgb_byte_tif() -> Path:
    return shared_file("geotiff/RGB.byte.tif")


@pytest.fixture
def path_rgba_uint16_tif() -> Path:
    return shared_file("geotiff/RGBA.uint16.tif")


@pytest.fixture
def path_float_nan_tif() -> Path:
    return shared_file("geotiff/float_nan.tif")


@pytest.fixture
def path_shade_tif() -> Path:
    return shared_file("geotiff/shade.tif")


@pytest.fixture
def path_all_nodata_tif() -> Path:
    return shared_file("geotiff/all-nodata.tif")


@pytest.fixture
def path_goes_tif() -> Path:
    return shared_file("geotiff/goes.tif")


@pytest.fixture
def path_reference1_tif() -> Path:
    return shared_file("rio_hist/reference1.tif")


def truncated(path: Path, tmp_path: Path, fraction: float = 0.5) -> Path:
    """A copy of a real file cut short, as an interrupted download leaves it."""
    out = tmp_path / f"truncated_{path.name}"
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


# -- opening and metadata -----------------------------------------------------------------------


@pytest.mark.parametrize("name", GEOTIFFS)
def test_metadata_matches_manifest(name: str) -> None:
    path = shared_file(f"geotiff/{name}")
    with open(DATA / "geotiff" / "manifest.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["file"] == name)
    with RasterSource(path) as src:
        assert (src.width, src.height, src.count) == (
            int(row["width"]),
            int(row["height"]),
            int(row["bands"]),
        )
        assert src.dtype == row["dtype"]
        if row["crs"] == "none":
            assert src.crs is None
        elif row["crs"].startswith("EPSG:"):
            assert src.crs is not None and src.crs.to_string() == row["crs"]
        else:
            assert src.crs is not None and src.crs.to_epsg() is None
        if row["nodata"] == "":
            assert src.nodata is None
        elif row["nodata"] == "nan":
            assert src.nodata is not None and np.isnan(src.nodata)
        else:
            assert src.nodata == float(row["nodata"])


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="nope.tif"):
        RasterSource(tmp_path / "nope.tif")


def test_not_a_raster() -> None:
    path = shared_file("geotiff/README.md")
    with pytest.raises(RasterReadError, match=r"README\.md: not a readable raster") as info:
        RasterSource(path)
    assert isinstance(info.value, OSError)
    assert "\n" not in str(info.value)


def test_truncated_tiff_fails_at_open(path_rgb_byte_tif: Path, tmp_path: Path) -> None:
    # The IFD of this file sits at its end, so GDAL notices at once.
    with pytest.raises(RasterReadError, match="truncated_RGB.byte.tif"):
        RasterSource(truncated(path_rgb_byte_tif, tmp_path))


def test_truncated_tiff_fails_at_read(path_goes_tif: Path, tmp_path: Path) -> None:
    # Here the header survives, so the file opens and the missing tiles surface on reading.
    with (
        RasterSource(truncated(path_goes_tif, tmp_path)) as src,
        pytest.raises(RasterReadError, match="truncated_goes.tif: reading failed"),
    ):
        src.read(Window(0, 0, src.width, src.height), [1, 2, 3])


def test_band_out_of_range_is_checked_before_reading(path_goes_tif: Path, tmp_path: Path) -> None:
    # On a truncated file a read would fail; the band error must come first.
    with RasterSource(truncated(path_goes_tif, tmp_path)) as src:
        for bad in ([4], [0], [1, 9]):
            with pytest.raises(BandIndexError, match="the raster has 3 band"):
                src.read(Window(0, 0, 8, 8), bad)


def test_pickled_source_reopens(path_rgb_byte_tif: Path) -> None:
    window = Window(100, 200, 64, 48)
    with RasterSource(path_rgb_byte_tif) as src:
        copy = pickle.loads(pickle.dumps(src))
        try:
            for a, b in zip(src.read(window, [1, 2, 3]), copy.read(window, [1, 2, 3])):
                np.testing.assert_array_equal(a, b)
        finally:
            copy.close()


# -- windows and validity -----------------------------------------------------------------------


def test_read_inside_matches_rasterio(path_rgb_byte_tif: Path) -> None:
    window = Window(300, 250, 128, 96)
    with RasterSource(path_rgb_byte_tif) as src, rasterio.open(path_rgb_byte_tif) as ds:
        data, valid = src.read(window, [3, 1])
        expected = ds.read([3, 1], window=window).astype(np.float32)
        expected_valid = ds.dataset_mask(window=window) > 0
    assert data.dtype == np.float32 and data.shape == (2, 96, 128)
    assert valid.dtype == np.bool_ and valid.shape == (96, 128)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(data[:, valid], expected[:, valid])


def test_window_past_the_edge_is_padded_invalid(path_rgb_byte_tif: Path) -> None:
    with RasterSource(path_rgb_byte_tif) as src, rasterio.open(path_rgb_byte_tif) as ds:
        # 40 px beyond the right edge and 30 px beyond the bottom.
        window = Window(src.width - 60, src.height - 50, 100, 80)
        data, valid = src.read(window, [1, 2, 3])
        inner = ds.read(window=Window(src.width - 60, src.height - 50, 60, 50)).astype(np.float32)
        inner_valid = ds.dataset_mask(window=Window(src.width - 60, src.height - 50, 60, 50)) > 0
    assert data.shape == (3, 80, 100)
    assert not valid[:, 60:].any() and not valid[50:, :].any()
    assert not data[:, :, 60:].any() and not data[:, 50:, :].any()
    np.testing.assert_array_equal(valid[:50, :60], inner_valid)
    np.testing.assert_array_equal(data[:, :50, :60][:, inner_valid], inner[:, inner_valid])


def test_window_before_the_origin(path_shade_tif: Path) -> None:
    with RasterSource(path_shade_tif) as src, rasterio.open(path_shade_tif) as ds:
        _, valid = src.read(Window(-16, -8, 32, 32), [1])
        inner = ds.read(1, window=Window(0, 0, 16, 24))
    assert not valid[:8].any() and not valid[:, :16].any()
    np.testing.assert_array_equal(valid[8:, 16:], inner != 255)


def test_window_fully_outside(path_rgb_byte_tif: Path) -> None:
    with RasterSource(path_rgb_byte_tif) as src:
        window = Window(src.width + 10, 0, 32, 32)
        data, valid = src.read(window, [1])
        assert data.shape == (1, 32, 32) and not valid.any() and not data.any()
        assert src.is_all_invalid(window)


def test_nodata_255(path_shade_tif: Path) -> None:
    with RasterSource(path_shade_tif) as src, rasterio.open(path_shade_tif) as ds:
        window = Window(0, 0, src.width, src.height)
        data, valid = src.read(window, [1])
        raw = ds.read(1)
    assert 0 < valid.mean() < 1
    np.testing.assert_array_equal(valid, raw != 255)
    assert not data[0, ~valid].any()  # nodata never reaches the model as 255


def test_nan_is_invalid(path_float_nan_tif: Path) -> None:
    with RasterSource(path_float_nan_tif) as src, rasterio.open(path_float_nan_tif) as ds:
        data, valid = src.read(Window(0, 0, 3, 2), [1])
        raw = ds.read(1)
    np.testing.assert_array_equal(valid, np.isfinite(raw))
    assert np.isfinite(data).all()
    np.testing.assert_array_equal(data[0][valid], raw[np.isfinite(raw)])


def test_nan_is_invalid_without_a_nodata_value(path_float_nan_tif: Path, tmp_path: Path) -> None:
    # float_nan.tif's values in a file that declares no nodata (as many float products do):
    # GDAL's mask then says "all valid", and the NaN must still be caught.
    with rasterio.open(path_float_nan_tif) as ds:
        profile, raw = ds.profile, ds.read()
    profile.update(nodata=None)
    copy = tmp_path / "float_nan_no_nodata.tif"
    with rasterio.open(copy, "w", **profile) as out:
        out.write(raw)
    with RasterSource(copy) as src:
        assert src.nodata is None
        data, valid = src.read(Window(0, 0, 3, 2), [1])
        assert src.is_all_invalid(Window(2, 0, 1, 1))
        assert not src.is_all_invalid(Window(1, 0, 1, 1))
    np.testing.assert_array_equal(valid, np.isfinite(raw[0]))
    assert np.isfinite(data).all()


def test_alpha_band_masks_the_colour_bands(path_rgba_uint16_tif: Path) -> None:
    with RasterSource(path_rgba_uint16_tif) as src, rasterio.open(path_rgba_uint16_tif) as ds:
        assert src.has_alpha
        _, valid = src.read(Window(0, 0, src.width, src.height), [1, 2, 3])
        alpha = ds.read(4)
    assert 0 < valid.sum() < valid.size
    np.testing.assert_array_equal(valid, alpha > 0)


def test_alpha_band_itself_does_not_validate_pixels(path_rgba_uint16_tif: Path) -> None:
    # GDAL reports the alpha band's own mask as "all valid"; reading it along with the colour
    # bands, or asking about a window with all bands, must not turn transparent pixels valid.
    with RasterSource(path_rgba_uint16_tif) as src, rasterio.open(path_rgba_uint16_tif) as ds:
        full = Window(0, 0, src.width, src.height)
        _, valid = src.read(full, [1, 2, 3, 4])
        np.testing.assert_array_equal(valid, ds.read(4) > 0)
        transparent = Window(0, 0, 64, 64)
        assert not (ds.read(4, window=transparent) > 0).any()
        assert src.is_all_invalid(transparent)
        assert src.is_all_invalid(transparent, [1, 2, 3, 4])


def test_all_nodata_raster(path_all_nodata_tif: Path) -> None:
    with RasterSource(path_all_nodata_tif) as src:
        for window in (Window(0, 0, 71, 512), Window(-20, 2400, 128, 128)):
            assert src.is_all_invalid(window)
            assert not src.read(window, [1, 2, 3])[1].any()


@pytest.mark.parametrize(
    "name",
    [
        "geotiff/RGB.byte.tif",
        "geotiff/shade.tif",
        "geotiff/float_nan.tif",
        "geotiff/RGBA.uint16.tif",
        "geotiff/world.rgb.tif",
        "timeseries/naip_2009.tif",
    ],
)
def test_is_all_invalid_agrees_with_read(name: str) -> None:
    with RasterSource(shared_file(name)) as src:
        bands = list(range(1, src.count + 1))
        step = max(8, max(src.width, src.height) // 6)
        for row in range(-step // 2, src.height, step):
            for col in range(-step // 2, src.width, step):
                window = Window(col, row, step, step)
                assert src.is_all_invalid(window) == (not src.read(window, bands)[1].any())


# -- bands --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "bands", "expected", "alpha", "result"),
    [
        (3, None, 3, False, [1, 2, 3]),
        (13, None, 3, False, [1, 2, 3]),
        (4, None, 3, True, [1, 2, 3]),
        (3, [3, 2, 1], 3, False, [3, 2, 1]),
        (1, [1, 1, 1], 3, False, [1, 1, 1]),
        (4, [4, 3, 2], 3, True, [4, 3, 2]),
    ],
)
def test_resolve_bands(
    count: int, bands: list[int] | None, expected: int, alpha: bool, result: list[int]
) -> None:
    assert resolve_bands(count, bands, expected, alpha_last=alpha) == result


@pytest.mark.parametrize(
    ("count", "bands", "expected", "alpha", "error", "message"),
    [
        (1, None, 3, False, DvisUsageError, "--bands 1,1,1"),
        (2, None, 3, False, DvisUsageError, "has 2 band"),
        (4, None, 4, True, DvisUsageError, "has 3 colour band"),
        (3, [4], 3, False, BandIndexError, "band.s. 4 out of range"),
        (3, [0, 1, 2], 3, False, BandIndexError, "band.s. 0 out of range"),
    ],
)
def test_resolve_bands_errors(
    count: int,
    bands: list[int] | None,
    expected: int,
    alpha: bool,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        resolve_bands(count, bands, expected, alpha_last=alpha, path="scene.tif")


def test_source_resolves_bands_past_its_alpha(path_rgba_uint16_tif: Path) -> None:
    with RasterSource(path_rgba_uint16_tif) as src:
        assert src.resolve_bands(None, 3) == [1, 2, 3]
        with pytest.raises(DvisUsageError, match="RGBA.uint16.tif"):
            src.resolve_bands(None, 4)


# -- normalisation ------------------------------------------------------------------------------


def reference_normalise(
    x: np.ndarray, divisor: float, mean: list[float], std: list[float], clip0: bool
) -> np.ndarray:
    """The formula, in float64, band by band."""
    out = np.empty(x.shape, dtype=np.float64)
    for b in range(x.shape[0]):
        y = x[b].astype(np.float64) / divisor
        if clip0:
            y = np.maximum(y, 0.0)
        out[b] = (y - mean[b]) / std[b]
    return out


@pytest.mark.parametrize(
    ("dtype", "divisor", "clip0"),
    [
        ("uint8", 255.0, False),
        ("uint16", 65535.0, False),
        ("int16", 32767.0, True),
        ("float32", 1.0, False),
    ],
)
def test_normalise_by_dtype(
    path_rgb_byte_tif: Path, dtype: str, divisor: float, clip0: bool
) -> None:
    with RasterSource(path_rgb_byte_tif) as src:
        data, _ = src.read(Window(200, 200, 64, 64), [1, 2, 3])
    # Real values, shifted to exercise negatives where the type has them.
    if dtype == "int16":
        data = data - 40.0
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    before = data.copy()
    out = normalise(data, dtype, mean, std)
    assert out.dtype == np.float32 and out.shape == data.shape
    np.testing.assert_allclose(out, reference_normalise(data, divisor, mean, std, clip0), atol=1e-5)
    np.testing.assert_array_equal(data, before)


def test_normalise_with_stretch(path_reference1_tif: Path) -> None:
    with RasterSource(path_reference1_tif) as src:
        data, valid = src.read(Window(0, 0, src.width, src.height), [1, 2, 3])
        lo, hi = percentile_stretch(src, [1, 2, 3])
    out = normalise(data, "uint16", [0.0] * 3, [1.0] * 3, stretch=(lo, hi))
    assert out.min() >= 0.0 and out.max() <= 1.0
    for b in range(3):
        expected = np.clip((data[b].astype(np.float64) - lo[b]) / (hi[b] - lo[b]), 0, 1)
        np.testing.assert_allclose(out[b], expected, atol=1e-6)
        # 2..98 % of the valid pixels: about 4 % end up clipped at either end.
        share = np.mean((out[b][valid] <= 0) | (out[b][valid] >= 1))
        assert 0.02 < share < 0.08


def test_normalise_rejects_mismatched_statistics() -> None:
    data = np.zeros((4, 2, 2), dtype=np.float32)
    with pytest.raises(DvisUsageError, match="3 mean and 3 std value.s. for 4 band"):
        normalise(data, "uint8", [0.5] * 3, [0.2] * 3)


# -- percentile stretch -------------------------------------------------------------------------


def test_percentile_stretch_matches_full_read(path_reference1_tif: Path) -> None:
    # 246x329 fits under the decimation limit, so the "decimated" read is the full one.
    with RasterSource(path_reference1_tif) as src, rasterio.open(path_reference1_tif) as ds:
        lo, hi = percentile_stretch(src, [1, 3], lo=2, hi=98)
        raw = ds.read([1, 3]).astype(np.float64)
        ok = ds.dataset_mask() > 0
    for i in range(2):
        np.testing.assert_allclose([lo[i], hi[i]], np.percentile(raw[i][ok], [2, 98]), rtol=1e-6)
    assert (lo < hi).all()


def test_percentile_stretch_reads_decimated(path_all_nodata_tif: Path) -> None:
    with RasterSource(path_all_nodata_tif) as src:
        data, valid = src.read_decimated([1, 2])
        assert data.shape == (2, 1024, round(71 * 1024 / 2475))
        assert not valid.any()
        lo, hi = percentile_stretch(src, [1, 2])
    # No valid pixel: the stretch falls back to the type's range, i.e. plain /65535.
    np.testing.assert_array_equal(lo, [0, 0])
    np.testing.assert_array_equal(hi, [65535, 65535])
