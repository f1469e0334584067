"""Vector output by extension: GeoJSON (RFC 7946), GeoPackage, GeoParquet, FlatGeobuf, or stdout.

GeoJSON follows RFC 7946 (EPSG:4326 longitude/latitude, counter-clockwise exterior rings, 7
decimals, antimeridian split, no ``crs`` member) because that is what web maps and most tools
assume of a ``.geojson``; the other formats carry a CRS, so they keep the raster's native one and
its coordinates untouched. ``-`` streams GeoJSONSeq (one RFC 7946 feature per line, lon/lat) to
stdout, for pipes into ogr2ogr, jq or geopandas.

Provenance tags travel inside the file where the format has room for them: GeoPackage and
FlatGeobuf layer metadata, a ``"dvis"`` foreign member of the GeoJSON FeatureCollection, the
``dvis`` key of the GeoParquet schema metadata. :func:`read_vector_tags` reads them back.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import pyogrio
import pyogrio.errors
import shapely

from dynamicvis_cli.errors import DvisError, DvisUsageError, NotGeoreferencedError
from dynamicvis_cli.geo.atomic import atomic_output


def layer_name(path: Path) -> str:
    """The output's stem as a layer name GeoPackage accepts (letters, digits, underscores)."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", path.stem).strip("_")
    return name if name[:1].isalpha() else f"layer_{name}".rstrip("_")


Tags = dict[str, str]
STDOUT = "-"


def _write_geojson(gdf: gpd.GeoDataFrame, path: Path, layer: str, tags: Tags) -> None:
    options: dict[str, str] = {}
    if gdf.crs is not None:
        gdf = gdf.to_crs(4326)  # geopandas keeps x = longitude, y = latitude
        # RFC7946=YES: right-hand-rule rings, no crs member, 7 decimals (~1 cm), antimeridian split.
        options["RFC7946"] = "YES"
    # else: pixel coordinates (asked for): plain GeoJSON without a crs member; RFC 7946 would
    # refuse x > 180 as a longitude.
    if tags:
        options["FOREIGN_MEMBERS_COLLECTION"] = json.dumps({"dvis": tags})
    pyogrio.write_dataframe(gdf, path, driver="GeoJSON", layer=layer, layer_options=options)


def _write_gpkg(gdf: gpd.GeoDataFrame, path: Path, layer: str, tags: Tags) -> None:
    pyogrio.write_dataframe(gdf, path, driver="GPKG", layer=layer, layer_metadata=tags or None)


def _write_fgb(gdf: gpd.GeoDataFrame, path: Path, layer: str, tags: Tags) -> None:
    # The spatial index (what makes .fgb worth choosing) stores features in Hilbert order.
    pyogrio.write_dataframe(gdf, path, driver="FlatGeobuf", layer=layer, layer_metadata=tags or None)


def _write_parquet(gdf: gpd.GeoDataFrame, path: Path, layer: str, tags: Tags) -> None:
    del layer  # GeoParquet has no layers
    gdf.to_parquet(path)
    if tags:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = {**(table.schema.metadata or {}), b"dvis": json.dumps(tags).encode()}
        pq.write_table(table.replace_schema_metadata(meta), path)


WRITERS: dict[str, Callable[[gpd.GeoDataFrame, Path, str, Tags], None]] = {
    ".geojson": _write_geojson,
    ".json": _write_geojson,
    ".gpkg": _write_gpkg,
    ".parquet": _write_parquet,
    ".fgb": _write_fgb,
}


def write_geojsonseq_stdout(gdf: gpd.GeoDataFrame) -> None:
    """One RFC 7946 feature per line on stdout: lon/lat, counter-clockwise exteriors, 7 decimals."""
    if gdf.crs is not None:
        gdf = gdf.to_crs(4326)
    gdf = gdf.set_geometry(shapely.orient_polygons(gdf.geometry.values, exterior_cw=False))
    sys.stdout.flush()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*geometry type.*", category=UserWarning)
            pyogrio.write_dataframe(gdf, "/vsistdout/", driver="GeoJSONSeq",
                                    layer_options={"COORDINATE_PRECISION": "7", "RS": "NO"})
        sys.stdout.flush()
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.FeatureError) as exc:
        # GDAL writes to the C stdout: a reader that went away (| head) or a full disk.
        raise DvisError(f"stdout: writing features failed ({exc}); was the pipe closed?") from None


def read_vector_tags(path: str | Path) -> Tags:
    """The provenance tags :func:`write_vectors` put in a vector file (empty when none)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        tags = doc.get("dvis") if isinstance(doc, dict) else None
        return {str(k): str(v) for k, v in (tags or {}).items()}
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(b"dvis")
        return {str(k): str(v) for k, v in json.loads(raw).items()} if raw else {}
    info: dict[str, Any] = pyogrio.read_info(path)
    return {str(k): str(v) for k, v in (info.get("layer_metadata") or {}).items()}


def write_vectors(
    gdf: gpd.GeoDataFrame,
    path: str | Path,
    *,
    overwrite: bool = False,
    pixel_coords: bool = False,
    source: object = None,
    tags: dict[str, Any] | None = None,
) -> Path | str:
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
        tags: provenance stored in the file (see the module docstring); not for ``-``.

    Returns:
        ``path`` (``"-"`` for stdout).

    Raises:
        DvisUsageError: unsupported extension, or ``pixel_coords`` with a ``gdf`` that has a CRS.
        NotGeoreferencedError: ``gdf`` has no CRS and ``pixel_coords`` is False.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    if str(path) == STDOUT:
        if gdf.crs is None and not pixel_coords:
            raise NotGeoreferencedError(source if source is not None else "input", "stdout")
        write_geojsonseq_stdout(gdf)
        return STDOUT
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
                writer(gdf, work, layer_name(path),
                       {str(k): str(v) for k, v in (tags or {}).items() if v is not None})
            os.replace(work, tmp)
        finally:
            work.unlink(missing_ok=True)
    return path
