"""Class rasters → polygons, read block by block (rasterio.features.shapes), dissolved per class.

The raster is read in bands of rows, so memory follows the number of polygons, not the scene:
polygons cut by a band edge are merged again by a per-class union. ``simplify`` is in map units;
``min_area`` is in square metres, measured in an equal-area projection (EPSG:6933) whatever the
raster's CRS, so the same threshold means the same thing in UTM, Web Mercator or degrees.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import shapes
from rasterio.windows import Window
from shapely.geometry import shape
from shapely.ops import unary_union

EQUAL_AREA = "EPSG:6933"


def polygonise(
    raster: Path,
    class_names: Sequence[str],
    *,
    skip: Sequence[int] = (),
    simplify: float | None = None,
    min_area: float | None = None,
    rows_per_block: int = 1024,
) -> gpd.GeoDataFrame:
    """One row per connected region of equal class: columns ``class_id``, ``class``, ``area_m2``.

    Args:
        raster: a single-band class raster (nodata pixels are not polygonised).
        class_names: name of each class value.
        skip: class values not to polygonise (e.g. background).
        simplify: Douglas–Peucker tolerance in map units (None: none).
        min_area: drop polygons smaller than this many m² (needs a CRS).
        rows_per_block: rows read at a time.
    """
    pieces: dict[int, list[Any]] = defaultdict(list)
    with rasterio.open(raster) as ds:
        crs = ds.crs
        for row in range(0, ds.height, rows_per_block):
            window = Window(0, row, ds.width, min(rows_per_block, ds.height - row))
            data = ds.read(1, window=window)
            valid = ds.read_masks(1, window=window) > 0
            transform = ds.window_transform(window)
            for geom, value in shapes(data, mask=valid, transform=transform):
                if int(value) not in skip:
                    pieces[int(value)].append(shape(geom))
    records = []
    for value, geoms in sorted(pieces.items()):
        merged = unary_union(geoms)
        parts = list(getattr(merged, "geoms", [merged]))
        for part in parts:
            if simplify:
                part = part.simplify(simplify, preserve_topology=True)
            if not part.is_empty:
                name = class_names[value] if value < len(class_names) else str(value)
                records.append({"class_id": value, "class": name, "geometry": part})
    gdf = gpd.GeoDataFrame(records, columns=["class_id", "class", "geometry"], geometry="geometry", crs=crs)
    if crs is not None and len(gdf):
        gdf["area_m2"] = gdf.to_crs(EQUAL_AREA).area.to_numpy()
    else:
        gdf["area_m2"] = np.nan if crs is not None else gdf.area.to_numpy()
    if min_area:
        gdf = gdf[gdf["area_m2"] >= min_area].reset_index(drop=True)
    return gdf
