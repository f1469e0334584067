"""Searching real archives: ids, windows, images, regions, batched queries and bad queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from dynamicvis_cli.errors import DvisUsageError, InputNotFoundError
from dynamicvis_cli.retrieval.archive import Archive
from dynamicvis_cli.retrieval.codes import hamming
from dynamicvis_cli.retrieval.search import hits_geojson, parse_query, read_query_file, search
from tests.retrieval.conftest import data_file


def test_queries_by_id_and_by_window_find_themselves(built_archive: Path, rgb_byte_tif: Path) -> None:
    archive = Archive.open(built_archive)
    row = archive.table.iloc[5]
    window = f"{rgb_byte_tif}@{row.col_off},{row.row_off},{row.width},{row.height}"
    result = search(archive, ["id:5", window], k=4, device="cpu")
    hits = result["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 1, 2, 3, 4]
    for first in (hits[0], hits[4]):  # the model is rebuilt from the archive's seed: same code
        assert first["id"] == 5 and first["distance"] == 0
        assert first["window"] == [row.col_off, row.row_off, 128, 128] and first["source"] == row.source
    codes = archive.codes()
    expected = np.sort(hamming(codes[5:6], codes)[0])[:4]
    assert [h["distance"] for h in hits[:4]] == expected.tolist()  # exact Hamming order
    assert result["embedded_queries"] is True


def test_region_filters_keep_only_hits_that_meet_it(built_archive: Path, tmp_path: Path) -> None:
    archive = Archive.open(built_archive)
    fp = archive.table.geometry
    west = fp.bounds.minx.min() + 0.35 * (fp.bounds.maxx.max() - fp.bounds.minx.min())
    bbox = (-80.0, 20.0, float(west), 30.0)
    result = search(archive, ["id:0"], k=5, bbox=bbox)
    inside = int(fp.intersects(box(*bbox)).sum())
    assert result["region_entries"] == inside and 0 < inside < archive.count
    assert len(result["hits"]) == min(5, inside)
    assert all(h["footprint"].intersects(box(*bbox)) for h in result["hits"])
    # --within: polygons in another CRS (the scene's UTM), read from a GeoPackage
    area = tmp_path / "area.gpkg"
    utm = archive.table.iloc[[3]].set_geometry(
        gpd.GeoSeries.from_wkb(archive.table.iloc[[3]]["footprint_native"], crs="EPSG:32618")).buffer(-10)
    gpd.GeoDataFrame(geometry=utm, crs="EPSG:32618").to_file(area)
    within = search(archive, ["id:7"], k=20, within=area)
    ids = {h["id"] for h in within["hits"]}
    assert 3 in ids and len(ids) <= 9  # chip 3 and at most its 8 neighbours touch it
    collection = hits_geojson(within["hits"])
    assert collection["type"] == "FeatureCollection" and "crs" not in collection


def test_batched_queries_from_a_file(built_archive: Path, tmp_path: Path) -> None:
    listing = tmp_path / "queries.txt"
    listing.write_text("# archive entries\nid:1\n\nid:2\n")
    texts = read_query_file(listing)
    assert texts == ["id:1", "id:2"]
    result = search(Archive.open(built_archive), texts, k=3)
    assert [q["hits"] for q in result["queries"]] == [3, 3] and result["embedded_queries"] is False


def test_bad_queries_are_clear_errors(built_archive: Path, tmp_path: Path) -> None:
    archive = Archive.open(built_archive)
    with pytest.raises(DvisUsageError, match="holds only"):
        search(archive, ["id:0"], k=archive.count + 1)
    with pytest.raises(DvisUsageError, match="no entry with id"):
        search(archive, [f"id:{archive.count + 100}"], k=1)
    one_band = data_file("geotiff", "shade.tif")
    with pytest.raises(DvisUsageError, match=r"1 band\(s\), but the archive's images have 3"):
        search(archive, [str(one_band)], k=1)
    with pytest.raises(InputNotFoundError):
        parse_query(str(tmp_path / "missing.tif"))
    with pytest.raises(DvisUsageError, match="--bbox"):
        search(archive, ["id:0"], k=1, bbox=(10, 10, 0, 0))
    with pytest.raises(DvisUsageError, match="no query"):
        search(archive, [], k=1)


def test_image_query_with_explicit_bands(built_archive: Path, embedder: Any) -> None:
    # a one-band scene can still be a query when --bands says which bands to use
    one_band = data_file("geotiff", "shade.tif")
    result = search(Archive.open(built_archive), [f"{one_band}@0,0,128,128"], k=2, bands=[1, 1, 1],
                    device="cpu")
    assert len(result["hits"]) == 2
