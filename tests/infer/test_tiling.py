"""Tile planner: coverage, full-size tiles inside the scene, counts, order, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.tiling import TileGrid, axis_starts, plan_tiles, tile_batches
from tests.conftest import SHARED

# (height, width, tile, overlap): sizes that divide and sizes that do not, scenes smaller than a
# tile along one or both axes, the largest overlap, and a 1-pixel scene.
CASES = [
    (100, 137, 32, 8),
    (100, 137, 32, 12),
    (20, 27, 32, 8),
    (20, 137, 32, 8),
    (96, 96, 32, 0),
    (56, 80, 32, 8),
    (33, 65, 32, 31),
    (1, 1, 1, 0),
    (718, 791, 256, 32),
]


@pytest.fixture(scope="module")
def geotiff_manifest_csv() -> Path:
    path = SHARED / "data" / "geotiff" / "manifest.csv"
    if not path.is_file():
        pytest.skip(f"real GeoTIFF manifest not found at {path} (needs ../shared/data)")
    return path


def coverage(windows: list[Window], height: int, width: int) -> np.ndarray:
    """(height, width) int: how many windows cover each scene pixel."""
    count = np.zeros((height, width), dtype=int)
    for w in windows:
        count[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    return count


def check_plan(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    windows = plan_tiles(height, width, tile, overlap)
    assert coverage(windows, height, width).min() >= 1
    for w in windows:
        assert (w.width, w.height) == (tile, tile)
        for off, size in ((w.row_off, height), (w.col_off, width)):
            # inside the scene, or the single tile at 0 of an axis smaller than a tile
            assert (0 <= off and off + tile <= size) or (off == 0 and size < tile)
    keys = [(w.row_off, w.col_off) for w in windows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # row-major, no duplicates
    return windows


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), CASES)
def test_plan_covers_the_scene_with_full_tiles_in_row_major_order(
    height: int, width: int, tile: int, overlap: int
) -> None:
    check_plan(height, width, tile, overlap)


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), CASES)
def test_counts_follow_the_ceil_formula(height: int, width: int, tile: int, overlap: int) -> None:
    def count(size: int) -> int:
        return 1 if size <= tile else math.ceil((size - tile) / (tile - overlap)) + 1

    windows = plan_tiles(height, width, tile, overlap)
    assert len(windows) == count(height) * count(width)
    assert TileGrid.plan(height, width, tile, overlap).shape == (count(height), count(width))


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "starts"),
    [
        (100, 32, 8, [0, 22, 45, 68]),  # 3 steps of at most 24 spread over 68
        (137, 32, 12, [0, 17, 35, 52, 70, 87, 105]),
        (96, 32, 0, [0, 32, 64]),  # divides: nothing shifted
        (104, 32, 8, [0, 24, 48, 72]),  # (104 - 32) / 24 = 3 exactly
        (20, 32, 8, [0]),  # smaller than a tile: one padded tile
        (32, 32, 8, [0]),
        (33, 32, 31, [0, 1]),
    ],
)
def test_axis_starts(size: int, tile: int, overlap: int, starts: list[int]) -> None:
    assert axis_starts(size, tile, overlap) == starts


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), CASES)
def test_neighbours_share_at_least_the_overlap(
    height: int, width: int, tile: int, overlap: int
) -> None:
    grid = TileGrid.plan(height, width, tile, overlap)
    for starts in (grid.row_starts, grid.col_starts):
        gaps = np.diff(starts)
        assert (gaps >= 1).all() and (gaps <= tile - overlap).all()
        assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # the slack is spread evenly


def test_plans_for_the_real_geotiffs(geotiff_manifest_csv: Path) -> None:
    """Real scene shapes: tall and narrow (71 x 2475), tiny (3 x 2), ordinary sizes."""
    rows = list(csv.DictReader(geotiff_manifest_csv.open()))
    assert rows
    for row in rows:
        height, width = int(row["height"]), int(row["width"])
        for tile, overlap in ((256, 32), (64, 16)):
            check_plan(height, width, tile, overlap)


@pytest.mark.parametrize(
    ("tile", "overlap", "words"),
    [
        (0, 0, ["--tile-size 0"]),
        (-5, 0, ["--tile-size -5"]),
        (32, -1, ["--overlap -1"]),
        (32, 32, ["--overlap 32", "--tile-size 32"]),
        (32, 40, ["--overlap 40", "--tile-size 32"]),
    ],
)
def test_invalid_tiling_is_a_usage_error_naming_the_values(
    tile: int, overlap: int, words: list[str]
) -> None:
    with pytest.raises(DvisUsageError) as info:
        plan_tiles(100, 100, tile, overlap)
    assert info.value.exit_code == 2
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("height", "width"), [(0, 10), (10, 0)])
def test_empty_scene_is_a_usage_error(height: int, width: int) -> None:
    with pytest.raises(DvisUsageError, match="nothing to tile"):
        plan_tiles(height, width, 32, 8)


def test_grid_positions_round_trip_and_reject_foreign_windows() -> None:
    grid = TileGrid.plan(100, 137, 32, 8)
    windows = grid.windows()
    assert len(grid) == len(windows)
    for w in windows:
        assert grid.window(*grid.position(w)) == w
    for foreign in (Window(1, 0, 32, 32), Window(0, 0, 16, 16), Window(0, 0, 137, 100)):
        with pytest.raises(DvisUsageError, match="not a tile"):
            grid.position(foreign)


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"), [(7, 3, [3, 3, 1]), (6, 3, [3, 3]), (2, 5, [2]), (0, 4, [])]
)
def test_tile_batches_keep_order(n: int, batch_size: int, sizes: list[int]) -> None:
    windows = [Window(i, 0, 1, 1) for i in range(n)]
    batches = tile_batches(windows, batch_size)
    assert [len(b) for b in batches] == sizes
    assert [w for b in batches for w in b] == windows


def test_tile_batches_rejects_empty_batches() -> None:
    with pytest.raises(DvisUsageError, match="--batch-size 0"):
        tile_batches([Window(0, 0, 1, 1)], 0)
