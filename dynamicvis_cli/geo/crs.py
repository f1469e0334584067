"""Coordinates: pixel ↔ map ↔ lon/lat, the same-grid check, and warping onto another grid.

Everything here works on arrays (many boxes or cells at once) and on anything that has a
``crs``, ``transform``, ``width`` and ``height`` (a :class:`~dynamicvis_cli.geo.read.RasterSource`,
a writer's grid), so the check that names a difference and the ``--align`` path share one notion
of "grid".
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from affine import Affine
from numpy.typing import ArrayLike, NDArray
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT

from dynamicvis_cli.errors import DvisUsageError, GridMismatchError, RasterReadError
from dynamicvis_cli.geo.read import RasterSource, error_text, open_dataset

#: Two grids are the same when every corner agrees to this fraction of a pixel.
GRID_TOLERANCE = 1e-9


class HasGrid(Protocol):
    """Anything placed on a raster grid."""

    @property
    def crs(self) -> CRS | None: ...
    @property
    def transform(self) -> Affine: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


# -- pixel ↔ map ↔ lon/lat ----------------------------------------------------------------------


def pixel_to_map(
    transform: Affine, cols: ArrayLike, rows: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Map coordinates of pixel positions, taken as given (no implicit half-pixel shift).

    Args:
        transform: the raster's pixel → map affine transform.
        cols, rows: pixel coordinates of any (same) shape; pass ``col + 0.5`` for pixel centres,
            whole numbers for the top-left corners, box edges as they are.

    Returns:
        (xs, ys) float64 arrays of that shape, in the raster's CRS.
    """
    c = np.asarray(cols, dtype=np.float64)
    r = np.asarray(rows, dtype=np.float64)
    t = transform
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def map_to_pixel(
    transform: Affine, xs: ArrayLike, ys: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Fractional pixel coordinates (cols, rows) of map positions; the inverse of
    :func:`pixel_to_map` (floor them for the containing pixel)."""
    return pixel_to_map(~transform, xs, ys)


@functools.lru_cache(maxsize=32)
def _to_lonlat_transformer(wkt: str) -> Transformer:
    return Transformer.from_crs(ProjCRS.from_wkt(wkt), ProjCRS.from_epsg(4326), always_xy=True)


def to_lonlat(
    crs: CRS | None, xs: ArrayLike, ys: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Longitude and latitude (EPSG:4326, degrees, in that order) of map coordinates.

    Args:
        crs: the CRS of ``xs``/``ys``.
        xs, ys: map coordinates of any (same) shape.

    Returns:
        (lon, lat) float64 arrays of that shape; inf where the point has no lon/lat (off the
        disk of a geostationary view).
    """
    if crs is None:
        raise DvisUsageError("coordinates without a CRS have no longitude/latitude")
    lon, lat = _to_lonlat_transformer(crs.to_wkt()).transform(
        np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    )
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


# -- same grid ----------------------------------------------------------------------------------


def describe_crs(crs: CRS | None) -> str:
    """A short name: ``EPSG:32618``, the CRS's own name, or its PROJ string; ``none``."""
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    if epsg is not None:
        return f"EPSG:{epsg}"
    name = str(ProjCRS.from_wkt(crs.to_wkt()).name or "")
    if name and name.lower() not in {"unnamed", "unknown", "undefined"}:
        return name
    proj = str(crs.to_proj4())
    return proj if len(proj) <= 60 else proj[:57] + "..."


def _same_crs(a: CRS | None, b: CRS | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b)


def _fmt_size(t: Affine) -> str:
    x, y = abs(t.a), abs(t.e)
    return f"{x:g}" if math.isclose(x, y, rel_tol=1e-9) else f"{x:g}x{y:g}"


def grid_differences(a: HasGrid, b: HasGrid) -> list[str]:
    """How grid ``b`` differs from grid ``a``, one short phrase per difference; [] when equal.

    Compared: CRS, shape, pixel size, origin and rotation. Transforms count as equal when every
    corner of the grid lands within ``GRID_TOLERANCE`` of a pixel of its counterpart, so float
    noise in a GeoTIFF's tags is not a mismatch.

    Returns:
        e.g. ``["CRS EPSG:32618 vs EPSG:3857", "shape 791x718 vs 546x726",
        "pixel size 300 vs 30"]`` (shapes as width x height).
    """
    diffs: list[str] = []
    if not _same_crs(a.crs, b.crs):
        diffs.append(f"CRS {describe_crs(a.crs)} vs {describe_crs(b.crs)}")
    if (a.width, a.height) != (b.width, b.height):
        diffs.append(f"shape {a.width}x{a.height} vs {b.width}x{b.height}")
    ta, tb = a.transform, b.transform
    pixel = max(math.hypot(ta.a, ta.d), math.hypot(ta.b, ta.e))
    tol = GRID_TOLERANCE * pixel
    size_a = np.array([[ta.a, ta.b], [ta.d, ta.e]])
    size_b = np.array([[tb.a, tb.b], [tb.d, tb.e]])
    # A scale difference shows at the far corner: compare it there, over the larger grid.
    extent = max(a.width, a.height, b.width, b.height, 1)
    if np.abs(size_a - size_b).max() * extent > tol:
        if ta.b == tb.b == ta.d == tb.d == 0:
            diffs.append(f"pixel size {_fmt_size(ta)} vs {_fmt_size(tb)}")
        else:
            diffs.append(
                f"transform ({ta.a:g}, {ta.b:g}, {ta.d:g}, {ta.e:g}) vs "
                f"({tb.a:g}, {tb.b:g}, {tb.d:g}, {tb.e:g})"
            )
    if max(abs(ta.c - tb.c), abs(ta.f - tb.f)) > tol:
        diffs.append(f"origin ({ta.c:.10g}, {ta.f:.10g}) vs ({tb.c:.10g}, {tb.f:.10g})")
    return diffs


def check_same_grid(path_a: object, a: HasGrid, path_b: object, b: HasGrid) -> None:
    """Raise :class:`GridMismatchError` naming every difference when ``b`` is not on ``a``'s grid."""
    diffs = grid_differences(a, b)
    if diffs:
        raise GridMismatchError(path_a, path_b, diffs)


# -- alignment ----------------------------------------------------------------------------------

# Every rasterio method but gauss, which GDAL's warper rejects.
RESAMPLING_NAMES = tuple(r.name for r in Resampling if r is not Resampling.gauss)


def resampling_by_name(name: str) -> Resampling:
    """The rasterio Resampling called ``name`` (nearest, bilinear, cubic, average, ...)."""
    if name not in RESAMPLING_NAMES:
        raise DvisUsageError(
            f"unknown resampling '{name}'; choose one of: {', '.join(RESAMPLING_NAMES)}"
        )
    return Resampling[name]


class AlignedSource(RasterSource):
    """A raster warped lazily onto another grid (GDAL WarpedVRT); reads like a RasterSource.

    Its ``crs``, ``transform``, ``width`` and ``height`` are the target grid's; ``path``, ``count``
    and ``dtype`` are the warped file's. Pixels of the target grid that the source does not cover
    (or covers with nodata/masked pixels) are not valid. The warp happens window by window as
    they are read.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        crs: CRS,
        transform: Affine,
        width: int,
        height: int,
        resampling: str = "bilinear",
    ) -> None:
        method = resampling_by_name(resampling)
        self.path = Path(path)
        self._target = (crs, transform, int(width), int(height), resampling)
        self._src: Any = open_dataset(self.path)
        if not self._src.crs:
            self._src.close()
            raise DvisUsageError(f"{self.path}: raster has no CRS, so it cannot be warped")
        count = int(self._src.count)
        has_alpha = any(ci == ColorInterp.alpha for ci in self._src.colorinterp)
        try:
            # Without an alpha band of its own the source gets one, hidden from callers, so that
            # target pixels beyond the source's footprint read as masked (0 could be real data).
            vrt = WarpedVRT(
                self._src,
                crs=crs,
                transform=transform,
                width=int(width),
                height=int(height),
                resampling=method,
                add_alpha=not has_alpha,
            )
        except RasterioError as exc:
            self._src.close()
            raise RasterReadError(self.path, f"cannot be warped ({error_text(exc)})") from exc
        self._init_from(vrt, count)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        crs, transform, width, height, resampling = self._target
        return (
            _rebuild_aligned,
            (self.path, crs.to_wkt(), tuple(transform), width, height, resampling),
        )

    def close(self) -> None:
        """Release the VRT and the file under it."""
        self._dataset.close()
        self._src.close()


def _rebuild_aligned(
    path: Path, wkt: str, transform: tuple[float, ...], width: int, height: int, resampling: str
) -> AlignedSource:
    return AlignedSource(
        path,
        crs=CRS.from_wkt(wkt),
        transform=Affine(*transform[:6]),
        width=width,
        height=height,
        resampling=resampling,
    )


def aligned(source_b: RasterSource, onto: HasGrid, resampling: str = "bilinear") -> AlignedSource:
    """``source_b`` warped onto the exact grid of ``onto`` (``--align``), lazily and by windows.

    Args:
        source_b: the raster to warp (re-opened: closing it does not affect the result).
        onto: the grid to land on (CRS, transform, width, height), e.g. the first date.
        resampling: a rasterio resampling name: nearest (class maps), bilinear, cubic,
            average, ...

    Returns:
        An :class:`AlignedSource`; ``grid_differences(result, onto) == []``. Close it when done.
    """
    if onto.crs is None:
        raise DvisUsageError(
            f"the target grid has no CRS, so {source_b.path} cannot be warped onto it"
        )
    return AlignedSource(
        source_b.path,
        crs=onto.crs,
        transform=onto.transform,
        width=onto.width,
        height=onto.height,
        resampling=resampling,
    )
