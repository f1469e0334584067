"""COGWriter: a valid COG on the input's exact grid, or nothing at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisError, DvisUsageError, OutputExistsError
from dynamicvis_cli.geo.crs import grid_differences
from dynamicvis_cli.geo.read import RasterSource
from dynamicvis_cli.geo.write_raster import COGWriter
from tests.geo import shared_file

cogeo = pytest.importorskip("rio_cogeo.cogeo", reason="rio-cogeo validates the COGs")


@pytest.fixture
def path_rgb_byte_tif() -> Path:
    return shared_file("geotiff/RGB.byte.tif")


@pytest.fixture
def path_rotated_tif() -> Path:
    return shared_file("geotiff/rotated.tif")


def copy_by_windows(
    src: RasterSource, writer: COGWriter, bands: list[int], tile: int = 200, skip_empty: bool = True
) -> None:
    """What a stitcher does: tiles that run past the edge, all-invalid ones skipped."""
    for row in range(0, src.height, tile):
        for col in range(0, src.width, tile):
            window = Window(col, row, tile, tile)
            data, valid = src.read(window, bands)
            if skip_empty and not valid.any():
                continue
            writer.write(window, data)


def assert_strict_cog(path: Path) -> None:
    ok, errors, warnings = cogeo.cog_validate(str(path), strict=True, quiet=True)
    assert ok, (errors, warnings)


@pytest.mark.parametrize("compress", ["DEFLATE", "ZSTD"])
def test_cog_keeps_the_exact_grid(path_rgb_byte_tif: Path, tmp_path: Path, compress: str) -> None:
    out = tmp_path / "copy.tif"
    tags = {"dvis_model": "base.test", "dvis_version": "0.0"}
    with RasterSource(path_rgb_byte_tif) as src:
        with COGWriter.like(
            out, src, count=3, dtype="uint8", nodata=0, tags=tags, compress=compress
        ) as writer:
            copy_by_windows(src, writer, [1, 2, 3])
        assert out.is_file()
        assert_strict_cog(out)
        with (
            RasterSource(out) as result,
            rasterio.open(out) as ds,
            rasterio.open(path_rgb_byte_tif) as orig,
        ):
            assert grid_differences(src, result) == []
            assert ds.crs == orig.crs and ds.transform == orig.transform  # exact, not close
            assert ds.nodata == 0 and ds.dtypes == ("uint8",) * 3
            assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
            assert ds.compression is not None and ds.compression.name == compress.lower()
            assert ds.overviews(1), "791x718 needs internal overviews"
            assert {k: ds.tags()[k] for k in tags} == tags
            np.testing.assert_array_equal(ds.read(), orig.read())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.tif"]  # no intermediates left


@pytest.mark.parametrize("overviews", ["average", "cubic_spline"])
def test_float_cog_with_nan_nodata(tmp_path: Path, overviews: str) -> None:
    """A probability map: float32, NaN nodata, unwritten tiles read back as nodata."""
    path = shared_file("geotiff/shade.tif")
    out = tmp_path / "prob.tif"
    with (
        RasterSource(path) as src,
        COGWriter.like(
            out, src, count=1, dtype="float32", nodata=float("nan"), overview_resampling=overviews
        ) as writer,
    ):
        # Only the top half gets results.
        for col in range(0, src.width, 256):
            data, valid = src.read(Window(col, 0, 256, 512), [1])
            writer.write(Window(col, 0, 256, 512), np.where(valid, data / 255.0, np.nan)[0])
    assert_strict_cog(out)
    with rasterio.open(out) as ds, rasterio.open(path) as orig:
        assert np.isnan(ds.nodata)
        result = ds.read(1)
        raw = orig.read(1)
    assert np.isnan(result[512:]).all()
    top = raw[:512] != 255
    np.testing.assert_allclose(result[:512][top], raw[:512][top] / 255.0, rtol=1e-6)
    assert np.isnan(result[:512][~top]).all()


def test_pixel_grid_without_crs(path_rotated_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "rotated_out.tif"
    with RasterSource(path_rotated_tif) as src:
        assert src.crs is None
        with COGWriter.like(out, src, count=1, dtype="uint8") as writer:
            copy_by_windows(src, writer, [1], tile=4)
        with rasterio.open(out) as ds, rasterio.open(path_rotated_tif) as orig:
            assert ds.crs is None
            assert ds.transform == orig.transform  # the rotation survives
            np.testing.assert_array_equal(ds.read(), orig.read())
    assert_strict_cog(out)


def test_windows_past_the_edge_are_cropped(path_rgb_byte_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "edge.tif"
    with (
        RasterSource(path_rgb_byte_tif) as src,
        COGWriter.like(out, src, count=1, dtype="uint16", nodata=0) as writer,
    ):
        block = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100) + 1
        writer.write(Window(src.width - 30, src.height - 40, 100, 100), block)
        writer.write(Window(-60, -70, 100, 100), block)
        with pytest.raises(ValueError, match="shape"):
            writer.write(Window(0, 0, 10, 10), block)
    with rasterio.open(out) as ds:
        result = ds.read(1)
    np.testing.assert_array_equal(result[-40:, -30:], block[:40, :30])
    np.testing.assert_array_equal(result[:30, :40], block[70:, 60:])
    assert np.count_nonzero(result) == 40 * 30 + 30 * 40


def test_exception_leaves_no_file(path_rgb_byte_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "failed.tif"
    with (
        RasterSource(path_rgb_byte_tif) as src,
        pytest.raises(RuntimeError, match="model crashed"),
        COGWriter.like(out, src, count=3, dtype="uint8") as writer,
    ):
        copy_by_windows(src, writer, [1, 2, 3], tile=400)
        raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_the_previous_output(path_rgb_byte_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "kept.tif"
    out.write_bytes(b"previous result")
    with (
        RasterSource(path_rgb_byte_tif) as src,
        pytest.raises(KeyboardInterrupt),
        COGWriter.like(out, src, count=1, dtype="uint8", overwrite=True) as writer,
    ):
        copy_by_windows(src, writer, [1])
        raise KeyboardInterrupt
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.tif"]


def test_existing_output_needs_overwrite(path_rgb_byte_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.tif"
    out.write_bytes(b"previous result")
    with RasterSource(path_rgb_byte_tif) as src:
        # Refused on entering, before any work.
        with (
            pytest.raises(OutputExistsError, match="exists.tif: output exists"),
            COGWriter.like(out, src, count=1, dtype="uint8"),
        ):
            pytest.fail("the with-block must not run")
        assert out.read_bytes() == b"previous result"
        with COGWriter.like(out, src, count=1, dtype="uint8", overwrite=True) as writer:
            copy_by_windows(src, writer, [2])
    assert_strict_cog(out)
    with rasterio.open(out) as ds, rasterio.open(path_rgb_byte_tif) as orig:
        np.testing.assert_array_equal(ds.read(1), orig.read(2))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("compress", "JPEG2000", "unknown compression"),
        ("overview_resampling", "fancy", "unknown overview resampling 'fancy'"),
        ("overview_resampling", "max", "unknown overview resampling 'max'"),
    ],
)
def test_bad_options_are_usage_errors(
    path_rgb_byte_tif: Path, tmp_path: Path, option: str, value: str, message: str
) -> None:
    with RasterSource(path_rgb_byte_tif) as src, pytest.raises(DvisUsageError, match=message):
        COGWriter.like(tmp_path / "x.tif", src, count=1, dtype="uint8", **{option: value})


def test_gdal_refusal_on_entering_leaves_nothing(tmp_path: Path) -> None:
    # GDAL refuses a 0-band TIFF; the error names the output and no temporary is left behind.
    writer = COGWriter(
        tmp_path / "empty.tif",
        crs=None,
        transform=Affine.identity(),
        width=10,
        height=10,
        count=0,
        dtype="uint8",
    )
    with pytest.raises(DvisError, match=r"empty.tif: cannot be created"), writer:
        pytest.fail("the with-block must not run")
    assert list(tmp_path.iterdir()) == []
