"""Cloud-Optimized GeoTIFF output on the input's exact grid, written window by window.

Windows go into a tiled GeoTIFF on disk beside the output (so memory does not grow with the
scene); on a clean exit GDAL's COG driver turns that file into the final COG (tiles, overviews,
compression) under a temporary name, which is then renamed onto the output. On an exception the
intermediate and the temporary are removed and the output path is left as it was.
"""

from __future__ import annotations

import uuid
import warnings
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from numpy.typing import ArrayLike
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisError, DvisUsageError
from dynamicvis_cli.geo.atomic import atomic_output, check_writable
from dynamicvis_cli.geo.crs import HasGrid
from dynamicvis_cli.geo.read import error_text, int_window

if TYPE_CHECKING:  # Self is in typing from Python 3.11 only
    from typing_extensions import Self

#: Tile size of the COG and of the intermediate (COG readers fetch whole tiles).
BLOCKSIZE = 512
COMPRESSIONS = ("DEFLATE", "ZSTD", "LZW")
#: What GDAL's COG driver can compute overviews with (rasterio's names).
OVERVIEW_RESAMPLINGS = (
    "nearest",
    "average",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "mode",
    "rms",
)


def _write_error(path: Path, what: str, exc: BaseException) -> DvisError:
    # errors.py has no write-side raster error; the root class keeps exit code 1 (runtime).
    return DvisError(f"{path}: {what} ({error_text(exc)})")


class COGWriter:
    """Write a raster window by window; a COG appears at ``path`` when the with-block ends cleanly.

    Example::

        with COGWriter.like(out, source, count=1, dtype="uint8", nodata=255) as w:
            for window, tile in results:
                w.write(window, tile)

    Windows never written read back as ``nodata`` (the intermediate is sparse), which is how
    skipped all-nodata tiles stay nodata in the output.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        crs: CRS | None,
        transform: Affine,
        width: int,
        height: int,
        count: int,
        dtype: str | np.dtype[Any],
        nodata: float | None = None,
        tags: dict[str, object] | None = None,
        overwrite: bool = False,
        compress: str = "DEFLATE",
        overview_resampling: str = "nearest",
    ) -> None:
        """Describe the output.

        Args:
            path: the output file.
            crs: the input's CRS, or None for a pixel grid.
            transform, width, height: the input's grid, kept exactly.
            count: number of bands.
            dtype: numpy data type of the bands.
            nodata: value for pixels without a result (NaN allowed for floats).
            tags: dataset metadata (provenance: model, version, command); values become strings.
            overwrite: replace an existing ``path``.
            compress: DEFLATE, ZSTD or LZW.
            overview_resampling: how overviews are computed: nearest (class maps), average
                (probabilities), ...
        """
        if compress.upper() not in COMPRESSIONS:
            raise DvisUsageError(f"unknown compression '{compress}'; choose one of {COMPRESSIONS}")
        # Checked here, not after an hour of inference when the COG is built.
        if overview_resampling not in OVERVIEW_RESAMPLINGS:
            raise DvisUsageError(
                f"unknown overview resampling '{overview_resampling}'; "
                f"choose one of: {', '.join(OVERVIEW_RESAMPLINGS)}"
            )
        self.path = Path(path)
        self.crs = crs
        self.transform = transform
        self.width = int(width)
        self.height = int(height)
        self.count = int(count)
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.overwrite = overwrite
        self.compress = compress.upper()
        self.overview_resampling = overview_resampling
        self._stack: ExitStack | None = None
        self._final_tmp: Path | None = None
        self._part: Path | None = None
        self._ds: Any = None

    @classmethod
    def like(
        cls,
        path: str | Path,
        grid: HasGrid,
        *,
        count: int,
        dtype: str | np.dtype[Any],
        **kwargs: Any,
    ) -> COGWriter:
        """A writer on ``grid``'s CRS, transform and shape (e.g. a RasterSource)."""
        return cls(
            path,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            count=count,
            dtype=dtype,
            **kwargs,
        )

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        # Refuse before any work is done, not after an hour of inference.
        check_writable(self.path, overwrite=self.overwrite)
        stack = ExitStack()
        self._final_tmp = stack.enter_context(atomic_output(self.path, overwrite=self.overwrite))
        self._part = self.path.with_name(f".{self.path.name}.part-{uuid.uuid4().hex[:8]}.tif")
        stack.callback(self._part.unlink, missing_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(
                    self._part,
                    "w",
                    driver="GTiff",
                    width=self.width,
                    height=self.height,
                    count=self.count,
                    dtype=self.dtype.name,
                    crs=self.crs,
                    transform=self.transform,
                    nodata=self.nodata,
                    tiled=True,
                    blockxsize=BLOCKSIZE,
                    blockysize=BLOCKSIZE,
                    # Fast compression: the intermediate is read once, by the COG driver.
                    compress="DEFLATE",
                    zlevel=1,
                    bigtiff="IF_SAFER",
                    sparse_ok=True,
                )
        except BaseException as failure:
            # Hand the failure to the atomic context, which then removes its temporary.
            stack.__exit__(type(failure), failure, failure.__traceback__)
            if isinstance(failure, RasterioError):
                raise _write_error(self.path, "cannot be created", failure) from failure
            raise
        if self.tags:
            self._ds.update_tags(**self.tags)
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        ds, self._ds = self._ds, None
        try:
            ds.close()
            if exc_type is None:
                self._convert()
        except BaseException as failure:
            # The atomic context removes its temporary and re-raises; nothing reaches path.
            if not stack.__exit__(type(failure), failure, failure.__traceback__):
                raise
            return
        stack.__exit__(exc_type, exc, tb)

    def _convert(self) -> None:
        """Intermediate GTiff → COG (GDAL computes the overviews from the file on disk)."""
        assert self._part is not None and self._final_tmp is not None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterio.shutil.copy(
                    self._part,
                    self._final_tmp,
                    driver="COG",
                    BLOCKSIZE=BLOCKSIZE,
                    COMPRESS=self.compress,
                    PREDICTOR="YES",
                    OVERVIEWS="AUTO",
                    RESAMPLING=self.overview_resampling.replace("_", "").upper(),
                    BIGTIFF="IF_SAFER",
                )
        except RasterioError as exc:
            raise _write_error(self.path, "writing the COG failed", exc) from exc

    # -- writing -----------------------------------------------------------------------------

    def update_tags(self, **tags: Any) -> None:
        """Add or replace dataset tags (e.g. provenance known only at the end of a run)."""
        if self._ds is None:
            raise RuntimeError("COGWriter.update_tags() outside its with-block")
        self.tags.update({k: str(v) for k, v in tags.items()})
        self._ds.update_tags(**{k: str(v) for k, v in tags.items()})

    def write(self, window: Window, array: ArrayLike) -> None:
        """Write ``array`` at ``window``; parts of the window beyond the grid are dropped.

        Args:
            window: pixel window on the output grid (whole pixels), may reach past its edges
                as the reader's padded tiles do.
            array: (count, h, w), or (h, w) for a single band, with (h, w) the window's size;
                cast to the writer's dtype.
        """
        if self._ds is None:
            raise RuntimeError("COGWriter.write() outside its with-block")
        data = np.asarray(array)
        if data.ndim == 2:
            data = data[None]
        col, row, w, h = int_window(window)
        if data.shape != (self.count, h, w):
            raise ValueError(
                f"array of shape {data.shape} for a {w}x{h} window of {self.count} band(s)"
            )
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + w, self.width), min(row + h, self.height)
        if c1 <= c0 or r1 <= r0:
            return
        part = data[:, r0 - row : r1 - row, c0 - col : c1 - col]
        try:
            self._ds.write(
                part.astype(self.dtype, copy=False), window=Window(c0, r0, c1 - c0, r1 - r0)
            )
        except RasterioError as exc:  # disk full, folder gone
            raise _write_error(self.path, "writing failed", exc) from exc
