"""Tile planning: scene shape, tile size and overlap → rasterio Windows, in row-major order.

The planner is pure (no I/O, no torch): readers, the model runner and both stitchers derive the
same grid from the same four numbers, so they never have to pass tile lists around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rasterio.windows import Window

from dynamicvis_cli.errors import DvisUsageError


def check_tiling(tile: int, overlap: int) -> None:
    """Raise :class:`DvisUsageError` unless ``1 <= tile`` and ``0 <= overlap < tile``."""
    if tile < 1:
        raise DvisUsageError(f"--tile-size {tile}: must be at least 1 pixel")
    if overlap < 0:
        raise DvisUsageError(f"--overlap {overlap}: must not be negative")
    if overlap >= tile:
        raise DvisUsageError(
            f"--overlap {overlap} with --tile-size {tile}: the overlap must be smaller than the "
            "tile, or tiles would never advance"
        )


def axis_starts(size: int, tile: int, overlap: int) -> list[int]:
    r"""Offsets of the tiles along one axis of ``size`` pixels.

    With stride :math:`s = t - o` (tile :math:`t`, overlap :math:`o`) and scene size :math:`n`:

    - :math:`n \le t`: one tile at 0. It extends past the scene by :math:`t - n` pixels; the
      reader pads that part and it is marked invalid, so the model always sees full-size input.
    - :math:`n > t`: :math:`k = \lceil (n - t) / s \rceil + 1` tiles, spread evenly from 0 to
      :math:`n - t`: tile :math:`i` at :math:`\lfloor i (n - t) / (k - 1) \rfloor`.

    The count uses ceil, not floor (as TorchGeo's ``tile_to_chips`` does), so the remainder that a
    multiple of the stride leaves at the far edge still gets a tile. Every tile is full-size and
    inside the scene (as SAHI's ``get_slice_bboxes`` arranges by shifting its last tile back), but
    the slack is spread over all steps instead of piling up in the last one: every step is at most
    :math:`s` (so neighbours share at least the overlap) and the steps differ by at most one
    pixel. That keeps the overlap between any two tile rows close to ``overlap``, which is what
    bounds the dense stitcher's memory on wide scenes (a last tile shifted back by up to
    :math:`s - 1` pixels would make one overlap nearly a whole tile).

    Args:
        size: scene length along the axis, in pixels (≥ 1).
        tile: tile length in pixels (≥ 1).
        overlap: pixels shared by consecutive tiles (0 ≤ overlap < tile).

    Returns:
        Strictly increasing offsets: 0 first; when ``size > tile``, ``size - tile`` last.

    Raises:
        DvisUsageError: for an invalid tile, overlap or size.
    """
    check_tiling(tile, overlap)
    if size < 1:
        raise DvisUsageError(f"scene of {size} pixels along an axis: nothing to tile")
    if size <= tile:
        return [0]
    stride = tile - overlap
    steps = math.ceil((size - tile) / stride)
    # steps >= (size - tile) / stride, so each step is at most the stride; and size - tile >=
    # steps (stride >= 1), so each step is at least one pixel: offsets strictly increase.
    return [i * (size - tile) // steps for i in range(steps + 1)]


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one scene: row offsets × column offsets, each tile ``tile`` × ``tile`` pixels.

    Attributes:
        height: scene rows.
        width: scene columns.
        tile: tile side in pixels.
        overlap: pixels shared by neighbouring tiles.
        row_starts: row offsets of the tile rows (see :func:`axis_starts`).
        col_starts: column offsets of the tile columns.
    """

    height: int
    width: int
    tile: int
    overlap: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @classmethod
    def plan(cls, height: int, width: int, tile: int, overlap: int) -> TileGrid:
        """Plan the grid for a ``height`` × ``width`` scene (see :func:`axis_starts`)."""
        check_tiling(tile, overlap)
        if height < 1 or width < 1:
            raise DvisUsageError(f"scene of {height}x{width} pixels: nothing to tile")
        return cls(
            height=height,
            width=width,
            tile=tile,
            overlap=overlap,
            row_starts=tuple(axis_starts(height, tile, overlap)),
            col_starts=tuple(axis_starts(width, tile, overlap)),
        )

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @property
    def shape(self) -> tuple[int, int]:
        """(tile rows, tile columns)."""
        return len(self.row_starts), len(self.col_starts)

    def window(self, row: int, col: int) -> Window:
        """The tile in tile-row ``row`` and tile-column ``col`` (0-based)."""
        return Window(self.col_starts[col], self.row_starts[row], self.tile, self.tile)

    def windows(self) -> list[Window]:
        """All tiles in row-major order (left to right, then top to bottom)."""
        return [
            Window(c, r, self.tile, self.tile) for r in self.row_starts for c in self.col_starts
        ]

    def position(self, window: Window) -> tuple[int, int]:
        """(tile row, tile column) of a planned tile.

        Raises:
            DvisUsageError: ``window`` is not one of this grid's tiles.
        """
        try:
            if window.width != self.tile or window.height != self.tile:
                raise ValueError
            return self.row_starts.index(window.row_off), self.col_starts.index(window.col_off)
        except ValueError:
            raise DvisUsageError(
                f"{window!r} is not a tile of the {self.height}x{self.width} scene planned with "
                f"tile {self.tile} and overlap {self.overlap}"
            ) from None


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    """Tiles covering a ``height`` × ``width`` scene, in row-major order.

    Every tile is ``tile`` × ``tile`` pixels. Along each axis the offsets follow
    :func:`axis_starts`: spread evenly from 0 to the scene edge with steps of at most ``tile -
    overlap``, or a single tile at 0 that extends past a scene smaller than one tile (the reader
    pads it). Every scene pixel lies in at least one tile.

    Args:
        height: scene rows (≥ 1).
        width: scene columns (≥ 1).
        tile: tile side in pixels (≥ 1).
        overlap: pixels shared by neighbouring tiles (0 ≤ overlap < tile).

    Returns:
        Windows ``Window(col_off, row_off, tile, tile)``, rows of tiles top to bottom, each row
        left to right.

    Raises:
        DvisUsageError: for an invalid tile, overlap or scene size.
    """
    return TileGrid.plan(height, width, tile, overlap).windows()


def tile_batches(windows: Sequence[Window], batch_size: int) -> list[list[Window]]:
    """Consecutive groups of at most ``batch_size`` windows, order kept (the last may be short).

    Raises:
        DvisUsageError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise DvisUsageError(f"--batch-size {batch_size}: must be at least 1")
    return [list(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
