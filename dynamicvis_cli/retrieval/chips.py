"""Sources → chips: which files, which windows, and where each chip lies on Earth.

Sources are image files, folders (searched recursively for raster files) and glob patterns. An
image no larger than the chip size on both sides is one chip, at its own size; a larger one (a
scene) is cut into ``chip_size`` windows at ``0, stride, 2·stride, ...`` along each axis, so chip
origins sit on a predictable grid. With ``stride <= chip_size``, when the scene is not a multiple
of the stride a last chip is added ending exactly at the scene edge (as SAHI's
``get_slice_bboxes`` does), so every pixel is in a chip and every chip is full-size; with
``stride > chip_size`` (sparse sampling) only the grid positions that fit are used. Along an
axis shorter than the chip, the window is the whole axis (chips are never padded).

Footprints: the window's four corners (plus points along each edge, so that reprojection bends
the edges as it should) through the raster's affine transform give a polygon in the raster's CRS;
that polygon reprojected gives the WGS84 (longitude/latitude) footprint. A raster without CRS has
a footprint in pixel coordinates only.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from shapely.geometry import Polygon

from dynamicvis_cli.errors import DvisUsageError, InputNotFoundError
from dynamicvis_cli.geo.crs import pixel_to_map, to_lonlat
from dynamicvis_cli.infer.batch import expand_inputs

#: Extensions of the files a folder source contributes (case-insensitive).
RASTER_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt", ".bmp")

#: Points per footprint edge (corners included); 5 keeps reprojected edges within metres.
EDGE_POINTS = 5


def expand_sources(sources: Sequence[str]) -> list[Path]:
    """Files, folders (recursive, raster extensions only) and globs → sorted unique files.

    Raises:
        InputNotFoundError: a path does not exist.
        DvisUsageError: a glob matches nothing, or a folder holds no raster file.
    """
    found: set[Path] = set()
    for item in expand_inputs(sources):
        if item.is_dir():
            files = [p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_EXTENSIONS
                     and not p.name.startswith(".")]
            if not files:
                raise DvisUsageError(f"{item}: folder holds no raster file ({', '.join(RASTER_EXTENSIONS)})")
            found.update(files)
        elif item.is_file():
            found.add(item)
        else:
            raise InputNotFoundError(item)
    return sorted(p.resolve() for p in found)


def chip_starts(size: int, chip: int, stride: int) -> list[tuple[int, int]]:
    """(offset, length) of the chips along one axis of ``size`` pixels (see the module doc)."""
    if chip < 1 or stride < 1:
        raise DvisUsageError(f"--chip-size {chip} and --stride {stride} must be at least 1")
    if size <= chip:
        return [(0, size)]
    starts = list(range(0, size - chip + 1, stride))
    if stride <= chip and starts[-1] != size - chip:
        starts.append(size - chip)
    return [(s, chip) for s in starts]


def plan_chips(height: int, width: int, chip: int, stride: int) -> list[Window]:
    """Chip windows of a ``height`` × ``width`` raster, row-major (see the module doc)."""
    return [Window(c, r, w, h) for r, h in chip_starts(height, chip, stride)
            for c, w in chip_starts(width, chip, stride)]


def window_ring(window: Window, points: int = EDGE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (cols, rows) around a window's outline, clockwise from top-left, closed."""
    c0, r0 = float(window.col_off), float(window.row_off)
    c1, r1 = c0 + float(window.width), r0 + float(window.height)
    t = np.linspace(0.0, 1.0, points)[:-1]
    cols = np.concatenate([c0 + (c1 - c0) * t, np.full_like(t, c1), c1 - (c1 - c0) * t, np.full_like(t, c0)])
    rows = np.concatenate([np.full_like(t, r0), r0 + (r1 - r0) * t, np.full_like(t, r1), r1 - (r1 - r0) * t])
    return np.append(cols, cols[0]), np.append(rows, rows[0])


def footprints(window: Window, transform: Affine, crs: CRS | None) -> tuple[Polygon, Polygon | None]:
    """(native footprint, WGS84 footprint or None) of a window.

    The native polygon is in the raster's CRS (pixel coordinates for a raster without one); the
    WGS84 one is None without a CRS, or where a corner has no longitude/latitude (off the disk of
    a geostationary view).
    """
    cols, rows = window_ring(window)
    xs, ys = pixel_to_map(transform, cols, rows)
    native = Polygon(np.column_stack([xs, ys]))
    if crs is None:
        return native, None
    lon, lat = to_lonlat(crs, xs, ys)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        return native, None
    return native, Polygon(np.column_stack([lon, lat]))


# -- acquisition dates --------------------------------------------------------------------------

#: Tags read for an acquisition date, in order (GDAL's IMAGERY domain, then common producer tags).
DATE_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "ACQUISITION_DATETIME", "DATE_ACQUIRED",
             "acquisition_date", "acquired", "datetime")

_ISO = re.compile(r"(?<!\d)((?:19|20)\d\d)-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")
_COMPACT = re.compile(r"(?<!\d)((?:19|20)\d\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
_YEAR = re.compile(r"(?<![0-9A-Za-z])((?:19|20)\d\d)(?![0-9A-Za-z])")


def date_from_text(text: str, *, year_only: bool = False) -> str | None:
    """The first ISO (2020-06-01) or compact (20200601) date in ``text``; with ``year_only`` a
    lone year (``naip_2009``) as ``2009``. None when there is none."""
    for pattern in (_ISO, _COMPACT):
        m = pattern.search(text)
        if m:
            return f"{m.group(1)}-{m.group(2)}-{m.group(3)}"
    if year_only:
        m = _YEAR.search(text)
        if m:
            return m.group(1)
    return None


def acquisition_date(path: Path, tags: dict[str, str]) -> str | None:
    """When the image was taken, when known: a date tag, else a date (or a lone year) in the file
    name. ISO 8601 text of the precision known (``2020-06-01`` or ``2009``); None otherwise."""
    for key in DATE_TAGS:
        if key in tags and tags[key]:
            found = date_from_text(str(tags[key]))
            if found:
                return found
    return date_from_text(path.stem, year_only=True)


@dataclass(frozen=True)
class RasterInfo:
    """What chipping needs to know of a raster, read from its header."""

    path: Path
    width: int
    height: int
    count: int
    crs: CRS | None
    transform: Affine
    acquired: str | None


def raster_info(path: Path) -> RasterInfo:
    """Header of ``path`` (size, bands, CRS, transform, acquisition date)."""
    from dynamicvis_cli.errors import RasterReadError
    from dynamicvis_cli.geo.read import error_text

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                tags = {**ds.tags(), **ds.tags(ns="IMAGERY")}
                return RasterInfo(Path(path), ds.width, ds.height, ds.count, ds.crs or None,
                                  ds.transform, acquisition_date(Path(path), tags))
    except RasterioError as exc:
        raise RasterReadError(path, f"not a readable raster ({error_text(exc, path)})") from exc


# -- labels -------------------------------------------------------------------------------------


def read_label_table(path: Path) -> dict[Path, list[str]]:
    """A CSV of ``source,labels`` (labels separated by ``;``; paths relative to the CSV's folder)
    → resolved path → labels.

    Raises:
        InputNotFoundError, DvisUsageError: missing file, missing columns.
    """
    if not path.is_file():
        raise InputNotFoundError(path, "labels file")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"source", "labels"} <= cols:
            raise DvisUsageError(f"{path}: a labels CSV needs the columns source,labels (has {sorted(cols)})")
        out: dict[Path, list[str]] = {}
        for row in reader:
            src = Path(row["source"])
            src = (src if src.is_absolute() else path.parent / src).resolve()
            out[src] = [x.strip() for x in (row["labels"] or "").split(";") if x.strip()]
    return out
