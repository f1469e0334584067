"""write_vectors: RFC 7946 GeoJSON, GeoPackage, GeoParquet, FlatGeobuf; atomic; empty files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.warp
import shapely
from shapely.geometry import Polygon, box
from shapely.geometry.polygon import orient

from dynamicvis_cli.errors import DvisUsageError, NotGeoreferencedError, OutputExistsError
from dynamicvis_cli.geo.crs import pixel_to_map
from dynamicvis_cli.geo.write_vector import write_vectors
from tests.geo import shared_file

FORMATS = [".geojson", ".json", ".gpkg", ".parquet", ".fgb"]


def read_back(path: Path, order_by: str | None = None) -> gpd.GeoDataFrame:
    """The file's features; FlatGeobuf's spatial index stores them in Hilbert order, so tests
    that compare row by row put them back in ``order_by`` order."""
    gdf = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    if order_by is not None:
        gdf = gdf.sort_values(order_by, kind="stable").reset_index(drop=True)
    return gdf


def boxes_on_raster(
    raster: Path, pixel_boxes: list[tuple[float, float, float, float]]
) -> list[Polygon]:
    """Pixel boxes → clockwise polygons in the raster's CRS (the writer must turn them)."""
    with rasterio.open(raster) as ds:
        transform = ds.transform
    polygons = []
    for xmin, ymin, xmax, ymax in pixel_boxes:
        xs, ys = pixel_to_map(transform, [xmin, xmax], [ymax, ymin])
        polygons.append(orient(box(xs[0], ys[0], xs[1], ys[1]), sign=-1.0))
    return polygons


@pytest.fixture
def osbs_029_trees() -> gpd.GeoDataFrame:
    """The 61 annotated tree crowns of OSBS_029.tif (EPSG:32617) as map polygons."""
    tif = shared_file("neon_trees/OSBS_029.tif")
    table = pd.read_csv(shared_file("neon_trees/OSBS_029.csv"))
    boxes = list(table[["xmin", "ymin", "xmax", "ymax"]].itertuples(index=False, name=None))
    with rasterio.open(tif) as ds:
        crs = ds.crs
    return gpd.GeoDataFrame(
        {
            "label": table["label"].astype(str),
            "score": np.linspace(0.3, 0.99, len(table)),
            "tile": np.arange(len(table), dtype=np.int64),
        },
        geometry=boxes_on_raster(tif, boxes),
        crs=crs,
    )


@pytest.fixture
def rgb_byte_footprint() -> gpd.GeoDataFrame:
    """RGB.byte.tif's scene outline and one inner box, in UTM 18N."""
    tif = shared_file("geotiff/RGB.byte.tif")
    with rasterio.open(tif) as ds:
        crs, width, height = ds.crs, ds.width, ds.height
    geoms = boxes_on_raster(tif, [(0, 0, width, height), (100, 100, 200, 150)])
    return gpd.GeoDataFrame({"name": ["scene", "box"]}, geometry=geoms, crs=crs)


def signed_area(ring: list[list[float]]) -> float:
    """Shoelace area: positive for counter-clockwise rings."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


def assert_same_attributes(a: pd.DataFrame, b: pd.DataFrame) -> None:
    columns = [c for c in a.columns if c != a.geometry.name]
    assert [c for c in b.columns if c != b.geometry.name] == columns
    for c in columns:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(b[c].to_numpy(), a[c].to_numpy())
        else:
            assert b[c].tolist() == a[c].tolist()


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".gpkg", ".parquet", ".fgb"])
def test_native_formats_round_trip_exactly(
    osbs_029_trees: gpd.GeoDataFrame, tmp_path: Path, ext: str
) -> None:
    out = write_vectors(osbs_029_trees, tmp_path / f"trees{ext}")
    back = read_back(out, order_by="tile")
    assert back.crs == osbs_029_trees.crs
    assert len(back) == 61
    assert_same_attributes(osbs_029_trees, back)
    # Exact: the same coordinates in the same order (rings kept as given).
    assert all(shapely.equals_exact(back.geometry.values, osbs_029_trees.geometry.values, 0.0))


@pytest.mark.parametrize("ext", [".geojson", ".json"])
def test_geojson_round_trip_in_lonlat(
    osbs_029_trees: gpd.GeoDataFrame, tmp_path: Path, ext: str
) -> None:
    out = write_vectors(osbs_029_trees, tmp_path / f"trees{ext}")
    back = read_back(out)
    assert back.crs is not None and back.crs.to_epsg() == 4326
    assert_same_attributes(osbs_029_trees, back)
    expected = osbs_029_trees.to_crs(4326).geometry.values
    # Rings are re-oriented by the writer: compare normalised shapes, to 1e-7 degrees.
    same = shapely.equals_exact(
        shapely.normalize(back.geometry.values), shapely.normalize(expected), tolerance=1e-7
    )
    assert all(same)


def test_geojson_is_rfc7946(rgb_byte_footprint: gpd.GeoDataFrame, tmp_path: Path) -> None:
    out = write_vectors(rgb_byte_footprint, tmp_path / "scene.geojson")
    doc = json.loads(out.read_text())
    assert "crs" not in doc
    scene = doc["features"][0]["geometry"]["coordinates"][0]
    # Every exterior ring counter-clockwise, although the input rings were clockwise.
    assert all(signed_area(f["geometry"]["coordinates"][0]) > 0 for f in doc["features"])
    assert signed_area(list(rgb_byte_footprint.geometry[0].exterior.coords)) < 0
    # Longitude first, and where GDAL/OSR (independently) puts the scene's corner.
    corner = rgb_byte_footprint.geometry[0].exterior.coords[0]
    lon, lat = rasterio.warp.transform(
        rgb_byte_footprint.crs, "EPSG:4326", [corner[0]], [corner[1]]
    )
    assert scene[0] == pytest.approx([lon[0], lat[0]], abs=1e-7)
    assert -79.5 < scene[0][0] < -76.5 and 23 < scene[0][1] < 26


# -- empty results ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", FORMATS)
def test_empty_result_is_a_valid_empty_file(tmp_path: Path, ext: str) -> None:
    empty = gpd.GeoDataFrame(
        {"label": pd.Series([], dtype=str), "score": pd.Series([], dtype=float)},
        geometry=gpd.GeoSeries([], crs="EPSG:32618"),
        crs="EPSG:32618",
    )
    out = write_vectors(empty, tmp_path / f"nothing{ext}")
    back = read_back(out)
    assert len(back) == 0
    assert back.crs is not None
    if ext in (".geojson", ".json"):
        doc = json.loads(out.read_text())
        assert doc["type"] == "FeatureCollection" and doc["features"] == [] and "crs" not in doc


# -- CRS rules ----------------------------------------------------------------------------------


def pixel_boxes() -> gpd.GeoDataFrame:
    """Boxes in pixel coordinates of float_nan.tif, a raster without CRS."""
    shared_file("geotiff/float_nan.tif")
    # the second lies beyond x = 180, y = 90: pixel coordinates are not longitudes (GeoJSON's
    # RFC 7946 mode would refuse it)
    return gpd.GeoDataFrame({"v": [1, 2]}, geometry=[box(0, 0, 2, 1), box(1000, 400, 1030, 420)])


@pytest.mark.parametrize("ext", FORMATS)
def test_no_crs_is_refused_unless_pixel_coords(tmp_path: Path, ext: str) -> None:
    gdf = pixel_boxes()
    with pytest.raises(NotGeoreferencedError, match="float_nan.tif: raster has no CRS") as info:
        write_vectors(gdf, tmp_path / f"boxes{ext}", source="float_nan.tif")
    assert info.value.exit_code == 2 and "--pixel-coords" in str(info.value)
    assert list(tmp_path.iterdir()) == []

    out = write_vectors(gdf, tmp_path / f"boxes{ext}", pixel_coords=True)
    back = read_back(out, order_by="v")
    assert all(
        shapely.equals_exact(
            shapely.normalize(back.geometry.values), shapely.normalize(gdf.geometry.values), 0.0
        )
    )
    if ext in (".geojson", ".json"):
        assert "crs" not in json.loads(out.read_text())
    else:
        assert back.crs is None


def test_pixel_coords_with_a_crs_is_a_usage_error(
    osbs_029_trees: gpd.GeoDataFrame, tmp_path: Path
) -> None:
    with pytest.raises(DvisUsageError, match="pixel coordinates were asked for"):
        write_vectors(osbs_029_trees, tmp_path / "x.gpkg", pixel_coords=True)


@pytest.mark.parametrize("name", ["trees.shp", "trees.csv", "trees"])
def test_unsupported_extension(osbs_029_trees: gpd.GeoDataFrame, tmp_path: Path, name: str) -> None:
    with pytest.raises(DvisUsageError, match=r"\.fgb, \.geojson, \.gpkg, \.json, \.parquet"):
        write_vectors(osbs_029_trees, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


# -- atomic writes ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", FORMATS)
def test_existing_output_needs_overwrite(
    osbs_029_trees: gpd.GeoDataFrame, tmp_path: Path, ext: str
) -> None:
    out = tmp_path / f"trees{ext}"
    out.write_bytes(b"previous")
    with pytest.raises(OutputExistsError):
        write_vectors(osbs_029_trees, out)
    assert out.read_bytes() == b"previous"
    write_vectors(osbs_029_trees.head(5), out, overwrite=True)
    assert len(read_back(out)) == 5
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("ext", FORMATS)
def test_failed_write_leaves_nothing(
    osbs_029_trees: gpd.GeoDataFrame, tmp_path: Path, ext: str
) -> None:
    bad: Any = osbs_029_trees.assign(z=np.ones(len(osbs_029_trees), dtype=np.complex128))
    with pytest.raises(NotImplementedError):
        write_vectors(bad, tmp_path / f"trees{ext}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".parquet", ".fgb"])
def test_provenance_tags_travel_inside_every_format(
    rgb_byte_footprint: gpd.GeoDataFrame, tmp_path: Path, suffix: str
) -> None:
    from dynamicvis_cli.geo.info import describe_output
    from dynamicvis_cli.geo.write_vector import read_vector_tags

    path = tmp_path / f"tagged{suffix}"
    tags = {"dvis_version": "0.1.0", "model": "tiny", "weights_sha256": "sha256:ab", "tile_size": 128}
    write_vectors(rgb_byte_footprint, path, tags=tags)
    assert read_vector_tags(path) == {k: str(v) for k, v in tags.items()}
    back = gpd.read_parquet(path) if suffix == ".parquet" else gpd.read_file(path)
    assert len(back) == len(rgb_byte_footprint)  # the file is still plain data
    described = describe_output(path)
    assert described["kind"] == "vector" and described["features"] == len(rgb_byte_footprint)
    assert described["provenance"]["model"] == "tiny"


def test_geojson_splits_a_polygon_across_the_antimeridian(tmp_path: Path) -> None:
    """A footprint over Fiji in a Pacific-centred CRS comes out as two parts, not a world-wide band."""
    from pyproj import Transformer

    to_pdc = Transformer.from_crs(4326, 3832, always_xy=True)  # PDC Mercator, centred at 150°E
    corners = [(179.5, -17.0), (-179.5, -17.0), (-179.5, -16.0), (179.5, -16.0)]
    ring = [to_pdc.transform(lon, lat) for lon, lat in corners]
    gdf = gpd.GeoDataFrame({"name": ["fiji"]}, geometry=[Polygon(ring)], crs=3832)
    out = write_vectors(gdf, tmp_path / "fiji.geojson")
    geom = json.loads(Path(out).read_text())["features"][0]["geometry"]
    assert geom["type"] == "MultiPolygon" and len(geom["coordinates"]) == 2
    lons = sorted(max(abs(x) for x, _ in part[0]) for part in geom["coordinates"])
    assert all(179.4 < lon <= 180.0 for lon in lons)  # both parts hug ±180, none spans the globe
