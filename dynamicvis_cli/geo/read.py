"""Windowed raster reading: bands, validity masks and the scaling of raw values for the model.

A scene is never read whole: :class:`RasterSource` opens the file (metadata only) and reads the
windows it is asked for, padding windows that reach past the scene edge with invalid pixels, so the
tile planner can hand out full-size tiles everywhere. Values come back in raw units;
:func:`normalise` scales them as the model's recorded normalisation says.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import ArrayLike, NDArray
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from dynamicvis_cli.errors import (
    BandIndexError,
    DvisUsageError,
    InputNotFoundError,
    RasterReadError,
)

if TYPE_CHECKING:  # Self is in typing from Python 3.11 only
    from typing_extensions import Self

#: Long side, in pixels, of the decimated read behind :func:`percentile_stretch`.
STRETCH_MAX_SIZE = 1024


def resolve_bands(
    count: int,
    bands: Sequence[int] | None,
    expected: int,
    *,
    default: Sequence[int] | None = None,
    alpha_last: bool = False,
    path: object = "raster",
) -> list[int]:
    """The 1-based band indexes to read.

    Args:
        count: number of bands in the raster.
        bands: the user's choice (``--bands``), 1-based, repeats allowed (``1,1,1`` feeds a
            grey band to an RGB model); None means "the first ``expected`` bands".
        expected: number of bands the model takes.
        default: the bands the model was trained on (its checkpoint's ``band_indexes``), read
            when ``bands`` is None or empty; None means "the first ``expected`` bands".
        alpha_last: the raster's last band is an alpha band: the default never includes it
            (RGBA gives an RGB model bands 1-3) and it does not count towards ``expected``.
        path: named in error messages.

    Returns:
        The band indexes, in reading order. Given ``bands`` are returned as they are (after the
        range check): whether their number fits the model is the model loader's business, since
        it may adapt the first layer to another band count.

    Raises:
        BandIndexError: a given band is < 1 or > ``count``.
        DvisUsageError: ``bands`` is None or empty and the raster has fewer than ``expected``
            (non-alpha) bands, or lacks one of the ``default`` bands.
    """
    if bands is not None and len(bands) > 0:
        bad = [b for b in bands if not 1 <= int(b) <= count]
        if bad:
            raise BandIndexError(path, bad, count)
        return [int(b) for b in bands]
    if default is not None and len(default) > 0:
        if any(not 1 <= int(b) <= count for b in default):
            listed = ",".join(str(int(b)) for b in default)
            raise DvisUsageError(
                f"{path}: the raster has {count} band(s) but the model was trained on bands {listed} "
                f"(recorded in its checkpoint); choose {len(default)} with --bands"
            )
        return [int(b) for b in default]
    # An alpha band is a mask, not a colour: RGBA gives 3 bands to an RGB model, and too few
    # to a 4-band one.
    usable = count - 1 if alpha_last else count
    if usable < expected:
        hint = f" (for example --bands {','.join(['1'] * expected)})" if usable == 1 else ""
        raise DvisUsageError(
            f"{path}: the raster has {usable} {'colour ' if alpha_last else ''}band(s) but the "
            f"model takes {expected}; choose {expected} with --bands{hint}"
        )
    return list(range(1, expected + 1))


def int_window(window: Window) -> tuple[int, int, int, int]:
    """(col_off, row_off, width, height) rounded to whole pixels: the planner's windows are."""
    return (
        math.floor(window.col_off + 0.5),
        math.floor(window.row_off + 0.5),
        math.floor(window.width + 0.5),
        math.floor(window.height + 0.5),
    )


def open_dataset(path: Path) -> Any:
    """Open ``path`` with rasterio (a DatasetReader), mapping failures to dvis errors."""
    if not path.exists():
        raise InputNotFoundError(path, "raster")
    try:
        with warnings.catch_warnings():
            # A raster without CRS is legitimate here (crs is None); commands decide what it means.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioError as exc:
        raise RasterReadError(path, f"not a readable raster ({error_text(exc, path)})") from exc


def error_text(exc: BaseException, path: object = None) -> str:
    """The first line of a GDAL error without the file name (the message names it already)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if path is not None:
        for form in (f"'{path}' ", f"{path}: ", f"{Path(str(path)).name}: "):
            text = text.replace(form, "")
    return text


class RasterSource:
    """A raster opened lazily for windowed reads; a context manager.

    Picklable: a copy re-opens the file, so each worker process holds its own GDAL handle.

    Attributes:
        path: the file.
        width, height: size in pixels.
        count: number of bands a caller may select (an alpha band counts; a hidden one does not).
        dtype: numpy name of the band data type (the widest, if bands differ).
        crs: the coordinate reference system, or None for a pixel grid.
        transform: pixel → map affine transform (identity for a plain image).
        nodata: the nodata value (may be NaN), or None.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._dataset: Any = open_dataset(self.path)
        self._init_from(self._dataset, self._dataset.count)

    def _init_from(self, dataset: Any, count: int) -> None:
        self._dataset = dataset
        self.width: int = int(dataset.width)
        self.height: int = int(dataset.height)
        self.count: int = count
        self.dtype: str = np.result_type(*dataset.dtypes[:count]).name
        self.crs: CRS | None = dataset.crs if dataset.crs else None
        self.transform: Affine = dataset.transform
        self.nodata: float | None = dataset.nodata

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (self.path,))

    # -- context manager ---------------------------------------------------------------------

    def close(self) -> None:
        """Release the GDAL handle."""
        self._dataset.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        from dynamicvis_cli.geo.crs import describe_crs  # crs.py imports this module

        return (
            f"{type(self).__name__}({str(self.path)!r}, {self.width}x{self.height}, "
            f"{self.count} x {self.dtype}, crs={describe_crs(self.crs)!r}, nodata={self.nodata})"
        )

    # -- metadata ----------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    @property
    def has_alpha(self) -> bool:
        """The last selectable band is an alpha band (RGBA)."""
        return bool(self.count) and self._dataset.colorinterp[self.count - 1] == ColorInterp.alpha

    def resolve_bands(self, bands: Sequence[int] | None, expected: int, *,
                      default: Sequence[int] | None = None) -> list[int]:
        """:func:`resolve_bands` for this raster (its band count, alpha and path)."""
        return resolve_bands(self.count, bands, expected, default=default, alpha_last=self.has_alpha,
                             path=self.path)

    def check_bands(self, bands: Sequence[int]) -> list[int]:
        """Validate 1-based ``bands`` against this raster before anything is read."""
        if len(bands) == 0:
            raise DvisUsageError(f"{self.path}: no bands selected")
        bad = [b for b in bands if not 1 <= int(b) <= self.count]
        if bad:
            raise BandIndexError(self.path, bad, self.count)
        return [int(b) for b in bands]

    # -- reading -----------------------------------------------------------------------------

    def _clip(self, window: Window) -> tuple[tuple[int, int, int, int], Window | None, int, int]:
        """The integer window, its part inside the scene (or None), and that part's offset in it."""
        col, row, w, h = int_window(window)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + w, self.width), min(row + h, self.height)
        if c1 <= c0 or r1 <= r0:
            return (col, row, w, h), None, 0, 0
        return (col, row, w, h), Window(c0, r0, c1 - c0, r1 - r0), c0 - col, r0 - row

    def _mask_bands(self, idx: list[int]) -> list[int]:
        """The bands whose masks decide validity: an alpha band's own mask is "all valid", so
        it would make every pixel valid under the any-band rule; it only counts if alone."""
        interp = self._dataset.colorinterp
        return [i for i in idx if interp[i - 1] != ColorInterp.alpha] or idx

    def _valid(self, data: NDArray[np.float32], masks: NDArray[np.uint8]) -> NDArray[np.bool_]:
        # GDAL's per-band masks already fold in nodata, alpha bands and internal masks. A pixel
        # is kept when any selected band is valid (rasterio's dataset_mask rule: a genuine 0 in
        # one band of a nodata=0 scene is not a hole), but never with a NaN in any band, which
        # would poison the model's input; NaN counts even when nodata is unset.
        valid = np.asarray((masks > 0).any(axis=0), dtype=np.bool_)
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        return valid

    def read(
        self, window: Window, bands: Sequence[int]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Read a window that may reach past the scene edge.

        Args:
            window: pixel window (offsets and size rounded to whole pixels).
            bands: 1-based band indexes, repeats allowed.

        Returns:
            data: float32 (len(bands), h, w) in raw units (no scaling); 0 where not valid.
            valid: bool (h, w); False at nodata, NaN, masked (internal mask or alpha) pixels and
                outside the scene.

        Raises:
            BandIndexError: a band is out of range (checked before reading).
            RasterReadError: GDAL failed to read the file (truncated, corrupt).
        """
        idx = self.check_bands(bands)
        (_, _, w, h), inner, dx, dy = self._clip(window)
        data = np.zeros((len(idx), h, w), dtype=np.float32)
        valid = np.zeros((h, w), dtype=np.bool_)
        if inner is None:
            return data, valid
        try:
            part = self._dataset.read(idx, window=inner, out_dtype=np.float32)
            masks = self._dataset.read_masks(self._mask_bands(idx), window=inner)
        except RasterioError as exc:
            raise RasterReadError(self.path, f"reading failed ({error_text(exc)})") from exc
        ok = self._valid(part, masks)
        part[:, ~ok] = 0.0
        ih, iw = ok.shape
        data[:, dy : dy + ih, dx : dx + iw] = part
        valid[dy : dy + ih, dx : dx + iw] = ok
        return data, valid

    def is_all_invalid(self, window: Window, bands: Sequence[int] | None = None) -> bool:
        """True when no pixel of ``window`` is valid (so the tile can be skipped).

        Cheaper than :meth:`read`: outside the scene and all-valid integer rasters need no I/O,
        other cases read only the masks (plus the data of float rasters, for NaN).

        Args:
            window: pixel window, may reach past the scene edge.
            bands: the bands that will be read; None means all of them.
        """
        idx = self.check_bands(bands) if bands is not None else list(range(1, self.count + 1))
        idx = self._mask_bands(idx)
        _, inner, _, _ = self._clip(window)
        if inner is None:
            return True
        flags = self._dataset.mask_flag_enums
        is_float = np.dtype(self.dtype).kind == "f"
        if not is_float and all(flags[i - 1] == [MaskFlags.all_valid] for i in idx):
            return False
        try:
            masks = self._dataset.read_masks(idx, window=inner)
            if not (masks > 0).any():
                return True
            if not is_float:
                return False
            part = self._dataset.read(idx, window=inner, out_dtype=np.float32)
        except RasterioError as exc:
            raise RasterReadError(self.path, f"reading failed ({error_text(exc)})") from exc
        return not bool(self._valid(part, masks).any())

    def read_decimated(
        self, bands: Sequence[int], max_size: int = STRETCH_MAX_SIZE
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """The whole scene at reduced resolution (long side at most ``max_size``).

        GDAL serves decimated reads from overviews when the file has them, so this touches
        about ``max_size**2`` pixels however large the scene.

        Returns:
            data: float32 (len(bands), h, w), raw units, 0 where not valid.
            valid: bool (h, w).
        """
        idx = self.check_bands(bands)
        scale = min(1.0, max_size / max(self.width, self.height))
        h, w = max(1, round(self.height * scale)), max(1, round(self.width * scale))
        try:
            data = self._dataset.read(
                idx, out_shape=(len(idx), h, w), resampling=Resampling.nearest, out_dtype=np.float32
            )
            mask_idx = self._mask_bands(idx)
            masks = self._dataset.read_masks(mask_idx, out_shape=(len(mask_idx), h, w))
        except RasterioError as exc:
            raise RasterReadError(self.path, f"reading failed ({error_text(exc)})") from exc
        valid = self._valid(data, masks)
        data[:, ~valid] = 0.0
        return data, valid


def _dtype_scale(dtype: np.dtype[Any]) -> float | None:
    """Divisor that maps an integer type's positive range to 0..1; None for floats."""
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    if dtype.kind == "f":
        return None
    raise DvisUsageError(f"raster data type {dtype} cannot be scaled for the model")


def normalise(
    data: NDArray[np.floating[Any]],
    dtype: str | np.dtype[Any],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    stretch: tuple[ArrayLike, ArrayLike] | None = None,
) -> NDArray[np.float32]:
    """Scale raw values to 0..1 by data type (or a stretch), then standardise per band.

    Scaling: unsigned integers are divided by the type's maximum (uint8 /255, uint16 /65535);
    signed integers likewise (int16 /32767) and clipped at 0, since negative values of such
    sensors are fill or noise; floats are taken as they are (reflectance already 0..1). A
    ``stretch`` replaces the type scaling for any type: ``(x - lo) / (hi - lo)`` per band, clipped
    to [0, 1] (how 16-bit sensors using a few thousand of their 65535 levels are made visible).

    Args:
        data: (C, H, W) raw values, as :meth:`RasterSource.read` returns them.
        dtype: the raster's data type (``data`` itself is float32 already).
        mean, std: per-band statistics on the 0..1 scale, length C.
        stretch: (lo, hi), each of length C, e.g. from :func:`percentile_stretch`.

    Returns:
        float32 (C, H, W); ``data`` is not modified.
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 3:
        raise DvisUsageError(f"normalise expects (bands, height, width) data, got shape {x.shape}")
    c = x.shape[0]
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    if m.shape != (c,) or s.shape != (c,):
        raise DvisUsageError(
            f"normalisation has {m.size} mean and {s.size} std value(s) for {c} band(s)"
        )
    if stretch is not None:
        lo = np.asarray(stretch[0], dtype=np.float32).reshape(-1)
        hi = np.asarray(stretch[1], dtype=np.float32).reshape(-1)
        if lo.shape != (c,) or hi.shape != (c,):
            raise DvisUsageError(f"stretch has {lo.size}/{hi.size} values for {c} band(s)")
        # A flat band (hi == lo) maps to 0 rather than dividing by zero.
        span = np.maximum(hi - lo, np.finfo(np.float32).tiny)
        y = np.clip((x - lo[:, None, None]) / span[:, None, None], 0.0, 1.0)
    else:
        dt = np.dtype(dtype)
        scale = _dtype_scale(dt)
        y = x / np.float32(scale) if scale is not None else x.copy()
        if dt.kind == "i":
            np.maximum(y, 0.0, out=y)
    out: NDArray[np.float32] = ((y - m[:, None, None]) / s[:, None, None]).astype(np.float32)
    return out


def percentile_stretch(
    source: RasterSource, bands: Sequence[int], lo: float = 2, hi: float = 98
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-band percentiles of the valid pixels, for :func:`normalise`'s ``stretch``.

    Computed from a decimated read (:meth:`RasterSource.read_decimated`, long side at most
    1024 px, overviews used when present), never from a full-resolution read.

    Args:
        source: the raster.
        bands: 1-based band indexes.
        lo, hi: percentiles in 0..100.

    Returns:
        (lo_values, hi_values), each float32 (len(bands),). A raster without valid pixels gives
        the type's full range (0..max, or 0..1 for floats), i.e. the plain type scaling.
    """
    if not 0 <= lo < hi <= 100:
        raise DvisUsageError(f"percentile stretch needs 0 <= lo < hi <= 100, got {lo}, {hi}")
    data, valid = source.read_decimated(bands)
    if not valid.any():
        top = _dtype_scale(np.dtype(source.dtype)) or 1.0
        return (
            np.zeros(len(bands), dtype=np.float32),
            np.full(len(bands), top, dtype=np.float32),
        )
    pixels = data[:, valid]  # (C, N)
    q = np.percentile(pixels, [lo, hi], axis=1).astype(np.float32)
    return q[0], q[1]
