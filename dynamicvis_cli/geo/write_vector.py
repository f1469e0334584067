"""Vector output by extension: GeoJSON (RFC 7946), GeoPackage, GeoParquet, FlatGeobuf.

GeoJSON follows RFC 7946 (EPSG:4326 longitude/latitude, counter-clockwise exterior rings, no
``crs`` member) because that is what web maps and most tools assume of a ``.geojson``; the other
formats carry a CRS, so they keep the raster's native one and its coordinates untouched.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pyogrio

from dynamicvis_cli.errors import DvisUsageError, NotGeoreferencedError
from dynamicvis_cli.geo.atomic import atomic_output


def layer_name(path: Path) -> str:
    """The output's stem as a layer name GeoPackage accepts (letters, digits, underscores)."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", path.stem).strip("_")
    return name if name[:1].isalpha() else f"layer_{name}".rstrip("_")


def _write_geojson(gdf: gpd.GeoDataFrame, path: Path, layer: str) -> None:
    if gdf.crs is not None:
        gdf = gdf.to_crs(4326)  # geopandas keeps x = longitude, y = latitude
    # RFC7946=YES: right-hand-rule rings, no crs member, 7 decimals (~1 cm), antimeridian split.
    pyogrio.write_dataframe(
        gdf, path, driver="GeoJSON", layer=layer, layer_options={"RFC7946": "YES"}
    )


def _write_gpkg(gdf: gpd.GeoDataFrame, path: Path, layer: str) -> None:
    pyogrio.write_dataframe(gdf, path, driver="GPKG", layer=layer)


def _write_fgb(gdf: gpd.GeoDataFrame, path: Path, layer: str) -> None:
    # The spatial index (what makes .fgb worth choosing) stores features in Hilbert order.
    pyogrio.write_dataframe(gdf, path, driver="FlatGeobuf", layer=layer)


def _write_parquet(gdf: gpd.GeoDataFrame, path: Path, layer: str) -> None:
    del layer  # GeoParquet has no layers
    gdf.to_parquet(path)


WRITERS: dict[str, Callable[[gpd.GeoDataFrame, Path, str], None]] = {
    ".geojson": _write_geojson,
    ".json": _write_geojson,
    ".gpkg": _write_gpkg,
    ".parquet": _write_parquet,
    ".fgb": _write_fgb,
}


def write_vectors(
    gdf: gpd.GeoDataFrame,
    path: str | Path,
    *,
    overwrite: bool = False,
    pixel_coords: bool = False,
    source: object = None,
) -> Path:
    """Write features in the format the extension names, atomically.

    Args:
        gdf: the features (any geometry types); may be empty, which writes a valid empty file
            (a run that found nothing).
        path: ``.geojson``/``.json`` (RFC 7946, reprojected to EPSG:4326), ``.gpkg``,
            ``.parquet`` (GeoParquet) or ``.fgb`` (FlatGeobuf, with a spatial index, so its
            features come back in spatial rather than row order), the latter three in
            ``gdf``'s CRS.
        overwrite: replace an existing file.
        pixel_coords: ``gdf`` has no CRS on purpose (pixel coordinates of a raster without
            one); its coordinates are written as they are and the file records no CRS.
        source: the raster the features come from, named in errors.

    Returns:
        ``path``.

    Raises:
        DvisUsageError: unsupported extension, or ``pixel_coords`` with a ``gdf`` that has a CRS.
        NotGeoreferencedError: ``gdf`` has no CRS and ``pixel_coords`` is False.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    writer = WRITERS.get(path.suffix.lower())
    if writer is None:
        raise DvisUsageError(
            f"{path}: unsupported vector format '{path.suffix}'; "
            f"use one of {', '.join(sorted(WRITERS))}"
        )
    if gdf.crs is None and not pixel_coords:
        raise NotGeoreferencedError(source if source is not None else "input", path)
    if gdf.crs is not None and pixel_coords:
        raise DvisUsageError(
            f"{path}: pixel coordinates were asked for, but the features have a CRS ({gdf.crs})"
        )
    with atomic_output(path, overwrite=overwrite) as tmp:
        # GDAL picks layouts from the extension (FlatGeobuf writes a folder for a name without
        # .fgb), so write under a name that keeps it, then move it onto the atomic temporary.
        work = tmp.with_name(tmp.name + path.suffix.lower())
        try:
            with warnings.catch_warnings():
                # pyogrio warns that a layer's geometry type is unknown when gdf is empty, and,
                # for pixel coordinates, that there is no CRS: both are what was asked for.
                warnings.filterwarnings("ignore", message=".*geometry type.*", category=UserWarning)
                if pixel_coords:
                    warnings.filterwarnings("ignore", message=".*'crs' was not provided.*")
                    warnings.filterwarnings("ignore", message=".*No SRS set on layer.*")
                writer(gdf, work, layer_name(path))
            os.replace(work, tmp)
        finally:
            work.unlink(missing_ok=True)
    return path
