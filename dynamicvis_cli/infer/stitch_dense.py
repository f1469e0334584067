"""Dense per-pixel outputs (logits, probabilities) from overlapping tiles → one scene, band by band.

Tiles arrive in the planner's row-major order. Only the rows the current tile row can still
touch are held: once the first tile of tile-row ``i`` arrives, no later tile reaches above
``row_starts[i]``, so everything above it is finished and handed to ``emit`` as a full-width
band. The accumulator is ``min(tile, height)`` rows × ``width`` × ``channels``, whatever the
scene's height, and the writer gets the scene window by window.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.tiling import TileGrid, check_tiling

Mode = Literal["blend", "crop"]
MODES: tuple[Mode, ...] = ("blend", "crop")

EmitFn = Callable[[Window, NDArray[np.float32]], None]
"""``emit(window, array)``: a finished full-width band; ``array`` is float32 (channels, h, w)."""


def axis_weights(start: int, size: int, tile: int, overlap: int, mode: Mode) -> NDArray[np.float64]:
    """Weights along one axis of a tile at offset ``start`` in a scene of ``size`` pixels.

    A tile side is *interior* when it is not at the scene border (``start > 0`` for the near side,
    ``start + tile < size`` for the far side); only interior sides are tapered or trimmed, so
    pixels at the scene border keep full weight.

    - ``"blend"``: on an interior side the weight rises over the ``overlap`` pixels as a half Hann
      window, ``sin²(π/2 · (d + ½) / overlap)`` for a pixel ``d`` pixels from that side, and is 1
      elsewhere. Where two tiles meet at the planned stride the two ramps add up to exactly 1
      (sin² + cos²), so a model that agrees with itself is reproduced exactly, and the pixels
      next to a tile edge, where zero padding distorts a convolutional model most, get the least
      weight (never 0, so each covered pixel keeps some weight).
    - ``"crop"``: 1 on the tile's centre, 0 on the ``overlap // 2`` pixels of an interior near
      side and the ``overlap - overlap // 2`` pixels of an interior far side. Neighbours' kept
      parts then meet without a gap (they overlap where the last tile was shifted back), and a
      model whose receptive field reaches at most ``overlap // 2`` pixels gives the whole-image
      result.

    Args:
        start: tile offset along the axis.
        size: scene length along the axis.
        tile: tile length.
        overlap: planned overlap between neighbouring tiles.
        mode: "blend" or "crop".

    Returns:
        (tile,) float64 weights in [0, 1]; entries past the scene edge are meaningless.
    """
    weights = np.ones(tile, dtype=np.float64)
    near, far = start > 0, start + tile < size
    if overlap == 0 or not (near or far):
        return weights
    if mode == "crop":
        if near:
            weights[: overlap // 2] = 0.0
        if far:
            weights[tile - (overlap - overlap // 2) :] = 0.0
        return weights
    ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
    n = min(overlap, tile)
    if near:
        weights[:n] = np.minimum(weights[:n], ramp[:n])
    if far:
        weights[tile - n :] = np.minimum(weights[tile - n :], ramp[:n][::-1])
    return weights


class DenseStitcher:
    """Weighted average of overlapping tile outputs, emitted as finished full-width row bands.

    Each scene pixel gets ``Σ w·v / Σ w`` over the tiles that cover it, with ``w`` from
    :func:`axis_weights` (outer product of the row and column weights) times the tile's valid
    mask. Pixels with no weight (invalid in every tile, or in skipped tiles) come out as NaN.
    Sums are kept in float64 so that a pixel that all tiles agree on comes out bit-identical.

    Bands: when tile-row ``i + 1`` starts (or on :meth:`close`), rows
    ``row_starts[i] … row_starts[i + 1] - 1`` (to the scene's last row for the last tile row) are
    emitted. Bands are in order, cover every scene row exactly once and are at most ``tile`` rows.

    Attributes:
        grid: the tile plan the tiles must come from.
        accumulator_nbytes: bytes held for sums and weights, fixed at construction:
            ``8 · (channels + 1) · min(tile, height) · width``, independent of the scene height.
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: int,
        *,
        tile: int,
        overlap: int,
        mode: Mode = "blend",
        emit: EmitFn,
        accumulate: str = "float64",
        emit_columns: int | None = None,
    ) -> None:
        """Prepare an empty accumulator.

        Args:
            height: scene rows.
            width: scene columns.
            channels: values per pixel (classes, or 1 for a probability).
            tile: tile side the tiles were planned with.
            overlap: overlap the tiles were planned with.
            mode: "blend" (tapered weights) or "crop" (centre parts only); see :func:`axis_weights`.
            emit: called with each finished band ``(Window(0, row, width, rows), (channels, rows,
                width) float32)``.
            accumulate: dtype of the sums, "float64" (pointwise results bit-exact) or "float32"
                (half the memory; relative error ~1e-7).
            emit_columns: emit each band in pieces at most this many columns wide (same rows,
                left to right), so the caller's per-piece temporaries stay small on wide scenes.

        Raises:
            DvisUsageError: invalid sizes, tiling or mode.
        """
        check_tiling(tile, overlap)
        if mode not in MODES:
            raise DvisUsageError(f"stitching mode {mode!r}: expected one of {', '.join(MODES)}")
        if channels < 1:
            raise DvisUsageError(f"{channels} output channels: need at least 1")
        self.grid = TileGrid.plan(height, width, tile, overlap)
        self.channels = channels
        self.mode: Mode = mode
        self._emit = emit
        buffer_rows = min(tile, height)
        if accumulate not in ("float64", "float32"):
            raise DvisUsageError(f"accumulate={accumulate!r}: expected float64 or float32")
        self._sum = np.zeros((channels, buffer_rows, width), dtype=accumulate)
        self._weight = np.zeros((buffer_rows, width), dtype=accumulate)
        self._emit_columns = emit_columns or width
        self.accumulator_nbytes = self._sum.nbytes + self._weight.nbytes
        self._row_weights = [
            axis_weights(s, height, tile, overlap, mode) for s in self.grid.row_starts
        ]
        self._col_weights = [
            axis_weights(s, width, tile, overlap, mode) for s in self.grid.col_starts
        ]
        self._top = 0  # scene row held in buffer row 0
        self._next_band = 0  # tile row whose band is emitted next
        self._last = (-1, -1)  # (tile row, tile column) of the last tile added
        self._closed = False

    def add(self, window: Window, values: ArrayLike, valid: ArrayLike | None = None) -> None:
        """Accumulate one tile.

        Tiles must come in :func:`~dynamicvis_cli.infer.tiling.plan_tiles` order; tiles may be
        skipped (e.g. all-nodata ones), their pixels then get no weight from them.

        Args:
            window: a planned tile, ``Window(col_off, row_off, tile, tile)``; it may extend past
                the scene's right or bottom edge (the part outside is ignored).
            values: (channels, tile, tile) float outputs for the whole window.
            valid: (tile, tile) bool, False where the input was nodata or padding; None: all valid.

        Raises:
            DvisUsageError: a window that is not a planned tile, out of order, a wrong shape, or a
                stitcher already closed.
        """
        if self._closed:
            raise DvisUsageError("tile added to a dense stitcher that is already closed")
        grid = self.grid
        i, j = grid.position(window)
        if (i, j) <= self._last:
            raise DvisUsageError(
                f"{window!r} arrived after {grid.window(*self._last)!r}: tiles must be added in "
                "plan_tiles order (row-major)"
            )
        data = np.asarray(values, dtype=np.float32)
        expected = (self.channels, grid.tile, grid.tile)
        if data.shape != expected:
            raise DvisUsageError(
                f"tile {window!r}: values have shape {data.shape}, expected {expected}"
            )
        self._flush_until(i)
        row, col = grid.row_starts[i], grid.col_starts[j]
        h, w = min(grid.tile, grid.height - row), min(grid.tile, grid.width - col)
        weight = np.outer(self._row_weights[i][:h], self._col_weights[j][:w])
        if valid is not None:
            mask = np.asarray(valid, dtype=bool)
            if mask.shape != expected[1:]:
                raise DvisUsageError(
                    f"tile {window!r}: valid mask has shape {mask.shape}, expected {expected[1:]}"
                )
            weight *= mask[:h, :w]
        # Zero the unweighted values first: a NaN in padding or nodata would survive 0 · NaN.
        contribution = np.where(weight > 0, data[:, :h, :w], 0.0) * weight
        top = row - self._top  # always 0: the flush above moved the buffer to this tile row
        self._sum[:, top : top + h, col : col + w] += contribution
        self._weight[top : top + h, col : col + w] += weight
        self._last = (i, j)

    def close(self) -> None:
        """Emit every row not emitted yet; further :meth:`add` calls are errors. Idempotent."""
        if not self._closed:
            self._flush_until(len(self.grid.row_starts))
            self._closed = True

    def __enter__(self) -> DenseStitcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a failure the remaining rows are incomplete: emitting them would write a
        # plausible-looking but wrong output.
        if exc_type is None:
            self.close()

    def _flush_until(self, tile_row: int) -> None:
        """Emit the bands of all tile rows before ``tile_row``."""
        starts = self.grid.row_starts
        while self._next_band < tile_row:
            k = self._next_band
            end = starts[k + 1] if k + 1 < len(starts) else self.grid.height
            self._emit_top(end - self._top)
            self._next_band += 1

    def _emit_top(self, rows: int) -> None:
        """Emit the buffer's first ``rows`` rows and move the rest up."""
        for c0 in range(0, self.grid.width, self._emit_columns):
            c1 = min(c0 + self._emit_columns, self.grid.width)
            weight = self._weight[:rows, c0:c1]
            out = np.full((self.channels, rows, c1 - c0), np.nan, dtype=np.float32)
            np.divide(self._sum[:, :rows, c0:c1], weight, out=out, where=weight > 0, casting="same_kind")
            self._emit(Window(c0, self._top, c1 - c0, rows), out)
        # numpy copies through a temporary when source and destination overlap.
        self._sum[:, :-rows] = self._sum[:, rows:]
        self._sum[:, -rows:] = 0.0
        self._weight[:-rows] = self._weight[rows:]
        self._weight[-rows:] = 0.0
        self._top += rows
