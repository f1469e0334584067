"""Dense stitching: tiled result = whole-image result, blocks emitted once each, bounded memory."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.stitch_dense import DenseStitcher, Mode, axis_weights
from dynamicvis_cli.infer.tiling import TileGrid, plan_tiles
from tests.conftest import SHARED

Model = Callable[[torch.Tensor], torch.Tensor]

# Three 3x3 convolutions: each output pixel sees 3 pixels each way, less than overlap // 2
# for the overlaps tested (8 → 4, 12 → 6), so centre-cropped tiles see what the whole image sees.
RECEPTIVE_RADIUS = 3
# (tile, overlap, scene rows, scene columns): neither the stride nor the tile divides the scene;
# the last two are smaller than one tile along one or both axes.
CASES = [(32, 8, 100, 137), (32, 12, 100, 137), (32, 8, 20, 27), (32, 12, 20, 137)]


@pytest.fixture(scope="module")
def rgb_byte_tif() -> Path:
    path = SHARED / "data" / "geotiff" / "RGB.byte.tif"
    if not path.is_file():
        pytest.skip(f"real GeoTIFF not found at {path} (needs ../shared/data)")
    return path


def read(path: Path, window: Window) -> tuple[torch.Tensor, np.ndarray]:
    """(3, h, w) float32 reflectance-like values in [0, 1] and the (h, w) bool valid mask."""
    with rasterio.open(path) as ds:
        pixels = ds.read(window=window).astype(np.float32) / 255.0
        valid = ds.dataset_mask(window=window) > 0
    return torch.from_numpy(pixels), valid


def conv_model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1),
    ).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x[None])[0]

    return run


def pointwise_model(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel, no neighbourhood: every tile agrees exactly on every pixel it holds."""
    return torch.stack([x[0] * x[1] - x[2], torch.sin(3.0 * x).sum(0), x.mean(0) ** 2, x[2]])


def tiled(
    image: torch.Tensor,
    model: Model,
    *,
    tile: int,
    overlap: int,
    mode: Mode,
    valid: np.ndarray | None = None,
    skip: Callable[[Window], bool] = lambda w: False,
) -> tuple[np.ndarray, list[Window]]:
    """Run ``model`` tile by tile as the CLI does (zero-padded tiles) → (scene, emitted windows)."""
    _, height, width = image.shape
    out = np.full((4, height, width), -1.0, dtype=np.float32)
    bands: list[Window] = []

    def emit(window: Window, array: np.ndarray) -> None:
        assert array.dtype == np.float32 and array.shape == (4, window.height, window.width)
        rows = slice(window.row_off, window.row_off + window.height)
        out[:, rows, window.col_off : window.col_off + window.width] = array
        bands.append(window)

    with DenseStitcher(height, width, 4, tile=tile, overlap=overlap, mode=mode, emit=emit) as st:
        for w in plan_tiles(height, width, tile, overlap):
            if skip(w):
                continue
            h, c = min(tile, height - w.row_off), min(tile, width - w.col_off)
            x = torch.zeros(3, tile, tile)
            x[:, :h, :c] = image[:, w.row_off : w.row_off + h, w.col_off : w.col_off + c]
            mask = np.zeros((tile, tile), dtype=bool)  # padding is invalid
            mask[:h, :c] = (
                True
                if valid is None
                else valid[w.row_off : w.row_off + h, w.col_off : w.col_off + c]
            )
            st.add(w, model(x).numpy(), mask)
    return out, bands


def comparable(height: int, width: int, tile: int) -> tuple[slice, slice]:
    """Away from a far border that a padded tile runs past: there the model saw the reader's zero
    padding through its receptive field, which the whole image's own zero padding does not match."""
    rows = slice(0, height - RECEPTIVE_RADIUS if height < tile else height)
    cols = slice(0, width - RECEPTIVE_RADIUS if width < tile else width)
    return rows, cols


@pytest.mark.parametrize(("tile", "overlap", "height", "width"), CASES)
def test_crop_mode_equals_the_whole_image(
    rgb_byte_tif: Path, tile: int, overlap: int, height: int, width: int
) -> None:
    image, _ = read(rgb_byte_tif, Window(300, 300, width, height))
    model = conv_model()
    whole = model(image).numpy()
    out, _ = tiled(image, model, tile=tile, overlap=overlap, mode="crop")
    rows, cols = comparable(height, width, tile)
    np.testing.assert_allclose(out[:, rows, cols], whole[:, rows, cols], rtol=0, atol=1e-5)
    assert np.isfinite(out).all()


# Blend mode also averages in pixels near tile edges, which the tile's zero padding reaches
# through the receptive field. Their half-Hann weights are small (< 0.23 within 3 px of an edge
# for overlap 8), so the largest error, measured on this crop, is 4.2 % of the output's range
# for overlap 8 and 2.2 % for overlap 12 (0.0 and 1e-7 % in crop mode); the tolerance is 5 %.
BLEND_TOLERANCE = 0.05


@pytest.mark.parametrize(("tile", "overlap", "height", "width"), CASES)
def test_blend_mode_is_close_to_the_whole_image(
    rgb_byte_tif: Path, tile: int, overlap: int, height: int, width: int
) -> None:
    image, _ = read(rgb_byte_tif, Window(300, 300, width, height))
    model = conv_model()
    whole = model(image).numpy()
    out, _ = tiled(image, model, tile=tile, overlap=overlap, mode="blend")
    rows, cols = comparable(height, width, tile)
    err = np.abs(out - whole)[:, rows, cols]
    scale = float(whole.max() - whole.min())
    assert err.max() <= BLEND_TOLERANCE * scale
    # Away from every tile edge (centre parts) blending changes nothing.
    assert np.median(err) <= 1e-5


@pytest.mark.parametrize("mode", ["blend", "crop"])
@pytest.mark.parametrize(("tile", "overlap", "height", "width"), CASES)
def test_pointwise_model_is_reproduced_exactly(
    rgb_byte_tif: Path, mode: Mode, tile: int, overlap: int, height: int, width: int
) -> None:
    image, _ = read(rgb_byte_tif, Window(300, 300, width, height))
    out, _ = tiled(image, pointwise_model, tile=tile, overlap=overlap, mode=mode)
    np.testing.assert_array_equal(out, pointwise_model(image).numpy())


@pytest.mark.parametrize("mode", ["blend", "crop"])
@pytest.mark.parametrize(("tile", "overlap", "height", "width"), CASES)
def test_blocks_cover_every_pixel_once_and_are_at_most_a_tile(
    rgb_byte_tif: Path, mode: Mode, tile: int, overlap: int, height: int, width: int
) -> None:
    image, _ = read(rgb_byte_tif, Window(300, 300, width, height))
    _, blocks = tiled(image, pointwise_model, tile=tile, overlap=overlap, mode=mode)
    seen = np.zeros((height, width), dtype=int)
    for b in blocks:
        assert 1 <= b.height <= tile and b.width >= 1
        seen[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] += 1
    assert (seen == 1).all()
    firsts = list(dict.fromkeys(b.row_off for b in blocks))
    assert firsts == sorted(firsts)  # row intervals start top to bottom...
    for row in firsts:  # ...and each is finished left to right
        cols = [b.col_off for b in blocks if b.row_off == row]
        assert cols == sorted(cols)


def test_nodata_pixels_get_no_weight_and_come_out_nan_where_nothing_valid_covers_them(
    rgb_byte_tif: Path,
) -> None:
    window = Window(0, 250, 137, 100)  # the scene's nodata collar covers most of this corner
    image, valid = read(rgb_byte_tif, window)
    assert 0.2 < (~valid).mean() < 0.9
    want = pointwise_model(image).numpy()
    for mode in ("blend", "crop"):
        out, _ = tiled(image, pointwise_model, tile=32, overlap=8, mode=mode, valid=valid)
        assert np.isnan(out[:, ~valid]).all()
        np.testing.assert_array_equal(out[:, valid], want[:, valid])


def test_a_tile_invalid_in_its_overlap_leaves_the_neighbour_to_decide(rgb_byte_tif: Path) -> None:
    image, _ = read(rgb_byte_tif, Window(300, 300, 137, 100))
    # Tile A's values there are NaN (as from NaN nodata) and marked invalid; B covers them.
    height, width, tile, overlap = 100, 137, 32, 8
    out = np.full((1, height, width), np.nan, dtype=np.float32)

    def emit(w: Window, a: np.ndarray) -> None:
        out[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = a

    st = DenseStitcher(height, width, 1, tile=tile, overlap=overlap, mode="blend", emit=emit)
    truth = image[:1].numpy()
    for w in plan_tiles(height, width, tile, overlap):
        values = np.zeros((1, tile, tile), dtype=np.float32)
        h, c = min(tile, height - w.row_off), min(tile, width - w.col_off)
        values[:, :h, :c] = truth[:, w.row_off : w.row_off + h, w.col_off : w.col_off + c]
        valid = np.ones((tile, tile), dtype=bool)
        if (w.row_off, w.col_off) == (0, 0):
            values[:, :, 24:] = np.nan
            valid[:, 24:] = False
        st.add(w, values, valid)
    st.close()
    np.testing.assert_array_equal(out, truth)


def test_skipped_tiles_leave_nan_only_where_no_other_tile_reaches(rgb_byte_tif: Path) -> None:
    image, _ = read(rgb_byte_tif, Window(300, 300, 137, 100))
    skipped = Window(42, 22, 32, 32)  # inner tile (1, 2); its neighbours cover all but its centre
    out, bands = tiled(
        image, pointwise_model, tile=32, overlap=8, mode="crop", skip=lambda w: w == skipped
    )
    assert sum(b.height * b.width for b in bands) == 100 * 137
    nan = np.isnan(out[0])
    # Crop mode keeps all but 4 px at each interior side; with rows at 0, 22, 45 and columns at
    # 21, 42, 63 only tile (1, 2) keeps rows 28..48 and columns 49..66.
    assert nan[28:49, 49:67].all() and nan.sum() == 21 * 18


def held_bytes(height: int, width: int, *, tile: int = 64, overlap: int = 16) -> int:
    """The stitcher's own peak of held sums and weights over a whole scene (4 channels)."""
    values = np.ones((4, tile, tile), dtype=np.float32)
    st = DenseStitcher(height, width, 4, tile=tile, overlap=overlap, emit=lambda w, a: None,
                       emit_columns=256)
    for w in plan_tiles(height, width, tile, overlap):
        st.add(w, values)
    st.close()
    assert st.held_nbytes == 0  # everything emitted and freed
    return st.peak_nbytes


def test_held_memory_does_not_grow_with_scene_height() -> None:
    sizes = {h: held_bytes(h, 300) for h in (100, 1000, 20_000)}
    assert sizes[1000] == sizes[20_000]


def test_held_memory_on_wide_scenes_is_a_thin_strip_not_a_tile_row() -> None:
    tile, overlap, width = 64, 16, 20_000
    held = held_bytes(1000, width, tile=tile, overlap=overlap)
    steps = np.diff(TileGrid.plan(1000, width, tile, overlap).row_starts)
    carry = tile - steps.min()  # rows the next tile row still adds to
    strip = 8 * 5 * carry * width  # float64 sums of 4 channels + weights
    assert held <= strip + 8 * 5 * (2 * tile * tile + tile * (256 + tile))
    assert held < 0.4 * 8 * 5 * tile * width  # a whole tile row held would be 2.5x more


def peak_traced_bytes(height: int) -> int:
    """Peak Python/numpy allocation while stitching a ``height`` × 300, 4-channel scene."""
    width, tile, overlap = 300, 64, 16
    values = np.ones((4, tile, tile), dtype=np.float32)
    tracemalloc.start()
    try:
        st = DenseStitcher(height, width, 4, tile=tile, overlap=overlap, emit=lambda w, a: None)
        for w in plan_tiles(height, width, tile, overlap):
            st.add(w, values)
        st.close()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_measured_peak_memory_does_not_grow_with_scene_height() -> None:
    short, tall = peak_traced_bytes(256), peak_traced_bytes(4096)
    whole_tall_scene = 4 * 4096 * 300 * 4
    assert tall < 1.25 * short
    assert tall < whole_tall_scene / 5


def reference_axis_weights(
    start: int, size: int, tile: int, overlap: int, mode: str
) -> list[float]:
    """Plain-loop restatement of the documented rule."""
    out = []
    for p in range(tile):
        w = 1.0
        near, far = start > 0, start + tile < size
        if mode == "crop":
            if near and p < overlap // 2:
                w = 0.0
            if far and p >= tile - (overlap - overlap // 2):
                w = 0.0
        elif overlap > 0:
            if near and p < overlap:
                w = min(w, math.sin(math.pi / 2 * (p + 0.5) / overlap) ** 2)
            if far and tile - 1 - p < overlap:
                w = min(w, math.sin(math.pi / 2 * (tile - 1 - p + 0.5) / overlap) ** 2)
        out.append(w)
    return out


@pytest.mark.parametrize("mode", ["blend", "crop"])
@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [(137, 32, 12), (100, 32, 8), (20, 32, 8), (64, 32, 0), (40, 32, 31)],
)
def test_axis_weights_match_the_reference(mode: Mode, size: int, tile: int, overlap: int) -> None:
    grid = TileGrid.plan(size, size, tile, overlap)
    for start in grid.row_starts:
        want = reference_axis_weights(start, size, tile, overlap, mode)
        np.testing.assert_allclose(
            axis_weights(start, size, tile, overlap, mode), want, rtol=0, atol=1e-15
        )


def test_blend_weights_are_one_at_the_scene_border_and_sum_to_one_at_the_stride() -> None:
    size, tile, overlap = 132, 32, 12  # (132 - 32) / 20: the tiles sit exactly at the stride
    starts = TileGrid.plan(size, size, tile, overlap).row_starts
    assert starts[1] == tile - overlap
    first = axis_weights(starts[0], size, tile, overlap, "blend")
    last = axis_weights(starts[-1], size, tile, overlap, "blend")
    assert first[0] == 1.0 and last[-1] == 1.0
    assert (first > 0).all() and (last > 0).all()
    second = axis_weights(starts[1], size, tile, overlap, "blend")
    shared = slice(starts[1], starts[0] + tile)  # the planned overlap of the first two tiles
    total = first[shared] + second[shared.start - starts[1] : shared.stop - starts[1]]
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_misuse_is_a_usage_error() -> None:
    def make() -> DenseStitcher:
        return DenseStitcher(100, 137, 2, tile=32, overlap=8, emit=lambda w, a: None)

    values = np.zeros((2, 32, 32), dtype=np.float32)
    with pytest.raises(DvisUsageError, match="stitching mode 'mean'"):
        DenseStitcher(100, 137, 2, tile=32, overlap=8, mode="mean", emit=lambda w, a: None)  # type: ignore[arg-type]
    with pytest.raises(DvisUsageError, match="--overlap 32"):
        DenseStitcher(100, 137, 2, tile=32, overlap=32, emit=lambda w, a: None)
    st = make()
    st.add(Window(21, 0, 32, 32), values)
    with pytest.raises(DvisUsageError, match="plan_tiles order"):
        st.add(Window(0, 0, 32, 32), values)
    with pytest.raises(DvisUsageError, match="not a tile"):
        make().add(Window(5, 0, 32, 32), values)
    with pytest.raises(DvisUsageError, match=r"shape \(3, 32, 32\)"):
        make().add(Window(0, 0, 32, 32), np.zeros((3, 32, 32), dtype=np.float32))
    with pytest.raises(DvisUsageError, match="valid mask has shape"):
        make().add(Window(0, 0, 32, 32), values, np.ones((16, 16), dtype=bool))
    st = make()
    st.close()
    st.close()  # idempotent
    with pytest.raises(DvisUsageError, match="already closed"):
        st.add(Window(0, 0, 32, 32), values)


def test_a_failure_inside_the_with_block_emits_nothing_more() -> None:
    bands: list[Window] = []
    with (
        pytest.raises(RuntimeError),
        DenseStitcher(100, 137, 1, tile=32, overlap=8, emit=lambda w, a: bands.append(w)) as st,
    ):
        st.add(Window(0, 0, 32, 32), np.zeros((1, 32, 32), dtype=np.float32))
        final = list(bands)  # only what no later tile touches: the top-left cell
        assert final == [Window(0, 0, 21, 22)]
        raise RuntimeError("model failed")
    assert bands == final


@pytest.mark.parametrize("columns", [7, 40, 1000])
def test_float32_sums_and_column_pieces_cover_every_pixel_once(columns: int) -> None:
    height, width, tile, overlap = 70, 90, 32, 8
    rng = np.random.default_rng(3)
    scene = rng.standard_normal((2, height, width)).astype(np.float32)
    seen = np.zeros((height, width), dtype=int)
    out = np.full((2, height, width), np.nan, dtype=np.float32)

    def emit(window: Window, values: np.ndarray) -> None:
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        assert w <= columns
        seen[r:r + h, c:c + w] += 1
        out[:, r:r + h, c:c + w] = values

    stitcher = DenseStitcher(height, width, 2, tile=tile, overlap=overlap, emit=emit,
                             accumulate="float32", emit_columns=columns)
    for window in plan_tiles(height, width, tile, overlap):
        r, c = int(window.row_off), int(window.col_off)
        values = np.zeros((2, tile, tile), dtype=np.float32)
        part = scene[:, r:r + tile, c:c + tile]
        values[:, : part.shape[1], : part.shape[2]] = part
        stitcher.add(window, values)
    stitcher.close()
    assert (seen == 1).all()
    np.testing.assert_allclose(out, scene, rtol=1e-6, atol=1e-6)
