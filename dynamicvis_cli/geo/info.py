"""What a dvis output is and where it came from: format, grid or layer, and its provenance tags."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from dynamicvis_cli.errors import InputNotFoundError, RasterReadError

#: Extensions read as vector files; anything else is tried as a raster.
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".parquet", ".fgb")


def _raster_info(path: Path) -> dict[str, Any]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    from dynamicvis_cli.geo.crs import describe_crs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                tags = ds.tags()
                info: dict[str, Any] = {
                    "kind": "raster", "driver": ds.driver, "width": ds.width, "height": ds.height,
                    "bands": ds.count, "dtype": ds.dtypes[0], "nodata": ds.nodata,
                    "crs": describe_crs(ds.crs if ds.crs else None), "transform": list(ds.transform)[:6],
                    "overviews": ds.overviews(1), "layout": ds.profile.get("interleave"),
                    "tiled": bool(ds.profile.get("tiled")),
                }
    except RasterioError as exc:
        raise RasterReadError(path, f"not a readable raster or vector file ({exc})") from exc
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(path), strict=True)
    info["cog"] = bool(valid)
    if errors:
        info["cog_errors"] = errors
    info["provenance"] = {k: v for k, v in tags.items() if k != "AREA_OR_POINT"}
    return info


def _vector_info(path: Path) -> dict[str, Any]:
    import pyogrio

    from dynamicvis_cli.geo.write_vector import read_vector_tags

    if path.suffix.lower() == ".parquet":
        import geopandas as gpd

        gdf = gpd.read_parquet(path)
        meta = {"crs": gdf.crs.to_string() if gdf.crs else None, "features": len(gdf),
                "geometry_type": sorted(set(gdf.geom_type.dropna())), "fields": list(gdf.columns)}
    else:
        raw = pyogrio.read_info(path)
        meta = {"crs": raw.get("crs"), "features": int(raw.get("features", -1)),
                "geometry_type": raw.get("geometry_type"), "fields": list(raw.get("fields", []))}
    return {"kind": "vector", "driver": path.suffix.lower().lstrip("."), **meta,
            "provenance": read_vector_tags(path)}


def describe_output(path: str | Path) -> dict[str, Any]:
    """Format, grid or layer, and the dvis provenance tags of a raster or vector file.

    Raises:
        InputNotFoundError: ``path`` does not exist.
        RasterReadError: neither a raster nor a vector file dvis can read.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(path)
    info = _vector_info(path) if path.suffix.lower() in VECTOR_SUFFIXES else _raster_info(path)
    return {"path": str(path), **info}
