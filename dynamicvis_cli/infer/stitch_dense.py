"""Dense per-pixel outputs (logits, probabilities) from overlapping tiles → one scene, block by block.

Tiles arrive in the planner's row-major order, so a pixel is final once the last tile that covers
it (in that order) has arrived. Sums are kept in small blocks ("cells") that are allocated when a
tile first touches them and emitted, then freed, as soon as they are final. What is held at any
time is the strip that the current tile row shares with the next one (about ``overlap`` rows ×
the scene width) plus about one tile: memory does not depend on the scene's height, and on its
width only through that thin strip, which is what lets a 40,000-pixel-wide scene run in the same
memory as a 5,000-pixel one.
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

Mode = Literal["linear", "cosine", "centre", "blend", "crop"]
#: The tile-weight profiles (``--blend``), then the older names kept as aliases (``--stitch``).
BLENDS: tuple[Mode, ...] = ("linear", "cosine", "centre")
ALIASES: dict[str, Mode] = {"blend": "cosine", "crop": "centre"}
MODES: tuple[Mode, ...] = (*BLENDS, "blend", "crop")


def canonical_mode(mode: str) -> Mode:
    """A blend mode or one of its aliases → its canonical name (``blend`` → ``cosine``, ...).

    Raises:
        DvisUsageError: an unknown mode.
    """
    if mode in ALIASES:
        return ALIASES[mode]
    if mode not in BLENDS:
        raise DvisUsageError(
            f"stitching mode {mode!r}: expected one of {', '.join(BLENDS)} "
            "(or blend = cosine, crop = centre)"
        )
    return mode

EmitFn = Callable[[Window, NDArray[np.float32]], None]
"""``emit(window, array)``: a finished full-width band; ``array`` is float32 (channels, h, w)."""


def axis_weights(start: int, size: int, tile: int, overlap: int, mode: Mode) -> NDArray[np.float64]:
    """Weights along one axis of a tile at offset ``start`` in a scene of ``size`` pixels.

    A tile side is *interior* when it is not at the scene border (``start > 0`` for the near side,
    ``start + tile < size`` for the far side); only interior sides are tapered or trimmed, so
    pixels at the scene border keep full weight.

    - ``"cosine"`` (alias ``"blend"``): on an interior side the weight rises over the ``overlap``
      pixels as a half Hann window, ``sin²(π/2 · (d + ½) / overlap)`` for a pixel ``d`` pixels
      from that side, and is 1 elsewhere. Where two tiles meet at the planned stride the two
      ramps add up to exactly 1 (sin² + cos²), so a model that agrees with itself is reproduced
      exactly, and the pixels next to a tile edge, where zero padding distorts a convolutional
      model most, get the least weight (never 0, so each covered pixel keeps some weight).
    - ``"linear"``: the same, with a triangular ramp ``(d + ½) / overlap``; two ramps meeting at
      the planned stride also add up to 1. Less weight than cosine deep in the overlap, more
      right at the tile edge.
    - ``"centre"`` (alias ``"crop"``): 1 on the tile's centre, 0 on the ``overlap // 2`` pixels
      of an interior near side and the ``overlap - overlap // 2`` pixels of an interior far side.
      Neighbours' kept parts then meet without a gap (they overlap where tiles sit closer than
      the stride), and a model whose receptive field reaches at most ``overlap // 2`` pixels
      gives the whole-image result.

    Args:
        start: tile offset along the axis.
        size: scene length along the axis.
        tile: tile length.
        overlap: planned overlap between neighbouring tiles.
        mode: "linear", "cosine" or "centre" (or the aliases "blend", "crop").

    Returns:
        (tile,) float64 weights in [0, 1]; entries past the scene edge are meaningless.
    """
    weights = np.ones(tile, dtype=np.float64)
    near, far = start > 0, start + tile < size
    if overlap == 0 or not (near or far):
        return weights
    mode = canonical_mode(mode)
    if mode == "centre":
        if near:
            weights[: overlap // 2] = 0.0
        if far:
            weights[tile - (overlap - overlap // 2) :] = 0.0
        return weights
    if mode == "linear":
        ramp = (np.arange(overlap) + 0.5) / overlap
    else:
        ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
    n = min(overlap, tile)
    if near:
        weights[:n] = np.minimum(weights[:n], ramp[:n])
    if far:
        weights[tile - n :] = np.minimum(weights[tile - n :], ramp[:n][::-1])
    return weights


class DenseStitcher:
    """Weighted average of overlapping tile outputs, emitted block by block as it becomes final.

    Each scene pixel gets ``Σ w·v / Σ w`` over the tiles that cover it, with ``w`` from
    :func:`axis_weights` (outer product of the row and column weights) times the tile's valid
    mask. Pixels with no weight (invalid in every tile, or in skipped tiles) come out as NaN.
    With float64 sums (the default) a pixel that all tiles agree on comes out bit-identical.

    Cells: rows are cut at every tile start and every tile end, columns at every tile start, so
    each cell has a single *last* covering tile, ``(I, J)``; the cell is final once the tile
    added is ``(I, J)`` or later in row-major order (tiles may be skipped). Final cells of one row
    interval are gathered until they are at least ``emit_columns`` wide (or the interval is
    complete) and emitted as windows of at most ``emit_columns`` columns. Emitted windows never
    overlap and together cover the scene exactly once; within a row interval they go left to
    right, and intervals start in top-to-bottom order.

    Attributes:
        grid: the tile plan the tiles must come from.
        held_nbytes: bytes of sums and weights held now.
        peak_nbytes: the most ever held: about ``itemsize · (channels + 1) · (carry · width +
            2 · tile²)``, with ``carry = tile - (smallest tile step)`` rows (the overlap, or a
            little more where the planner spread the tiles), independent of the scene height.
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
        """Prepare an empty stitcher.

        Args:
            height: scene rows.
            width: scene columns.
            channels: values per pixel (classes, or 1 for a probability).
            tile: tile side the tiles were planned with.
            overlap: overlap the tiles were planned with.
            mode: "linear" or "cosine" (tapered weights; "blend" = cosine) or "centre" (centre
                parts only; "crop" = centre); see :func:`axis_weights`.
            emit: called with each final block ``(Window(col, row, cols, rows), (channels, rows,
                cols) float32)``.
            accumulate: dtype of the sums, "float64" (pointwise results bit-exact) or "float32"
                (half the memory; relative error ~1e-7).
            emit_columns: gather final cells until this wide, and emit pieces at most this wide;
                None emits every final run of cells at once, in one piece.

        Raises:
            DvisUsageError: invalid sizes, tiling or mode.
        """
        check_tiling(tile, overlap)
        canonical_mode(mode)  # raises for an unknown mode
        if channels < 1:
            raise DvisUsageError(f"{channels} output channels: need at least 1")
        if accumulate not in ("float64", "float32"):
            raise DvisUsageError(f"accumulate={accumulate!r}: expected float64 or float32")
        if emit_columns is not None and emit_columns < 1:
            raise DvisUsageError(f"emit_columns={emit_columns}: must be at least 1")
        self.grid = grid = TileGrid.plan(height, width, tile, overlap)
        self.channels = channels
        self.mode: Mode = mode
        self._emit = emit
        self._dtype = np.dtype(accumulate)
        self._emit_columns = emit_columns
        self._row_weights = [axis_weights(s, height, tile, overlap, mode) for s in grid.row_starts]
        self._col_weights = [axis_weights(s, width, tile, overlap, mode) for s in grid.col_starts]
        # Row intervals [a, b) between consecutive tile starts/ends, each with its last tile row.
        cuts = sorted({0, height, *grid.row_starts, *(min(r + tile, height) for r in grid.row_starts)})
        self._rows = [(a, b, _last_start(grid.row_starts, a)) for a, b in zip(cuts, cuts[1:])]
        # Column cells [c_J, c_J+1): the last tile column covering cell J is J.
        self._cols = list(zip(grid.col_starts, (*grid.col_starts[1:], width)))
        self._cells: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._emitted = [0] * len(self._rows)  # per row interval: column cells emitted so far
        self._first_open = 0  # first row interval not completely emitted
        self.held_nbytes = 0
        self.peak_nbytes = 0
        self._last = (-1, -1)  # (tile row, tile column) of the last tile added
        self._closed = False

    def add(self, window: Window, values: ArrayLike, valid: ArrayLike | None = None) -> None:
        """Accumulate one tile, then emit what it made final.

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
        for k in range(self._first_open, len(self._rows)):
            a, b, _ = self._rows[k]
            if a >= row + h:
                break
            if b <= row:
                continue
            for cell in range(j, len(self._cols)):
                c0, c1 = self._cols[cell]
                x0, x1 = max(c0, col), min(c1, col + w)
                if x0 >= x1:
                    break
                sums, weights = self._cell(k, cell)
                sums[:, :, x0 - c0 : x1 - c0] += contribution[:, a - row : b - row, x0 - col : x1 - col]
                weights[:, x0 - c0 : x1 - c0] += weight[a - row : b - row, x0 - col : x1 - col]
        self._last = (i, j)
        self._emit_final(i, j)

    def close(self) -> None:
        """Emit every cell not emitted yet; further :meth:`add` calls are errors. Idempotent."""
        if not self._closed:
            self._emit_final(len(self.grid.row_starts), 0)
            self._closed = True

    def __enter__(self) -> DenseStitcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a failure the remaining cells are incomplete: emitting them would write a
        # plausible-looking but wrong output.
        if exc_type is None:
            self.close()

    # -- cells ---------------------------------------------------------------------------------

    def _cell(self, k: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
        found = self._cells.get((k, cell))
        if found is None:
            a, b, _ = self._rows[k]
            c0, c1 = self._cols[cell]
            found = (np.zeros((self.channels, b - a, c1 - c0), dtype=self._dtype),
                     np.zeros((b - a, c1 - c0), dtype=self._dtype))
            self._cells[(k, cell)] = found
            self.held_nbytes += found[0].nbytes + found[1].nbytes
            self.peak_nbytes = max(self.peak_nbytes, self.held_nbytes)
        return found

    def _emit_final(self, i: int, j: int) -> None:
        """Emit the cells made final by tile ``(i, j)`` (``(rows, 0)``: everything)."""
        ncols = len(self._cols)
        for k in range(self._first_open, len(self._rows)):
            last_row = self._rows[k][2]
            if last_row > i:
                break
            final = ncols if last_row < i else j + 1  # column cells of interval k now final
            start = self._emitted[k]
            width = self._cols[final - 1][1] - self._cols[start][0] if final > start else 0
            complete = final == ncols
            if width and (complete or self._emit_columns is None or width >= self._emit_columns):
                self._emit_run(k, start, final)
                self._emitted[k] = final
            if complete and self._emitted[k] == ncols and k == self._first_open:
                self._first_open += 1

    def _emit_run(self, k: int, start: int, stop: int) -> None:
        """Emit column cells ``start … stop - 1`` of row interval ``k`` and free them."""
        a, b, _ = self._rows[k]
        x0, x1 = self._cols[start][0], self._cols[stop - 1][1]
        out = np.full((self.channels, b - a, x1 - x0), np.nan, dtype=np.float32)
        for cell in range(start, stop):
            found = self._cells.pop((k, cell), None)
            if found is None:  # no tile gave this cell weight (all skipped)
                continue
            sums, weights = found
            c0, c1 = self._cols[cell]
            np.divide(sums, weights, out=out[:, :, c0 - x0 : c1 - x0], where=weights > 0,
                      casting="same_kind")
            self.held_nbytes -= sums.nbytes + weights.nbytes
        piece = self._emit_columns or (x1 - x0)
        for p0 in range(0, x1 - x0, piece):
            p1 = min(p0 + piece, x1 - x0)
            self._emit(Window(x0 + p0, a, p1 - p0, b - a), out[:, :, p0:p1])


def _last_start(starts: tuple[int, ...], position: int) -> int:
    """Index of the last start at or before ``position`` (the last tile covering it)."""
    return max(i for i, s in enumerate(starts) if s <= position)
