"""Box merging: seams, class-aware NMS against a plain-loop reference, determinism, edge cases."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.stitch_boxes import BoxMerger, Detections
from dynamicvis_cli.infer.tiling import plan_tiles

SCENE = 400  # OSBS_029.tif is 400 x 400 pixels
TILE, OVERLAP = 160, 64  # tiles at 0, 80, 160, 240; the trees are at most 64 px across


@pytest.fixture(scope="module")
def osbs_029_csv() -> Path:
    from tests.conftest import SHARED

    path = SHARED / "data" / "neon_trees" / "OSBS_029.csv"
    if not path.is_file():
        pytest.skip(f"real tree-crown boxes not found at {path} (needs ../shared/data)")
    return path


@pytest.fixture(scope="module")
def trees(osbs_029_csv: Path) -> np.ndarray:
    """(61, 4) float64 xyxy: the annotated crowns of OSBS_029.tif, in scene pixels."""
    rows = list(csv.DictReader(osbs_029_csv.open()))
    return np.array([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows])


def overlap(a: list[float], b: list[float], match: str = "iou") -> float:
    """IoU, or intersection over the smaller box ("ios"), of two xyxy boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (min(area_a, area_b) if match == "ios" else area_a + area_b - inter)


def reference_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
    match: str = "iou",
) -> list[int]:
    """Greedy class-aware NMS as plain loops in float64, ranked as documented (score, y1, x1, y2,
    x2, label); returns the kept indices best first."""
    b = boxes.tolist()
    order = sorted(
        range(len(b)),
        key=lambda i: (-float(scores[i]), b[i][1], b[i][0], b[i][3], b[i][2], int(labels[i])),
    )
    kept: list[int] = []
    for i in order:
        if all(labels[j] != labels[i] or overlap(b[i], b[j], match) <= iou_threshold for j in kept):
            kept.append(i)
    return kept


def oracle_tiles(
    objects: np.ndarray, height: int, width: int, tile: int, overlap: int
) -> list[tuple[Window, np.ndarray]]:
    """What an ideal detector reports per tile: the visible part of every object, in tile pixels."""
    out = []
    for w in plan_tiles(height, width, tile, overlap):
        x0, y0 = w.col_off, w.row_off
        x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
        vis = np.stack(
            [
                np.maximum(objects[:, 0], x0),
                np.maximum(objects[:, 1], y0),
                np.minimum(objects[:, 2], x1),
                np.minimum(objects[:, 3], y1),
            ],
            axis=1,
        )
        seen = (vis[:, 2] > vis[:, 0]) & (vis[:, 3] > vis[:, 1])
        out.append((w, vis[seen] - [x0, y0, x0, y0]))
    return out


def merge_oracle(objects: np.ndarray, **kwargs: float) -> Detections:
    merger = BoxMerger(SCENE, SCENE, tile=TILE, overlap=OVERLAP, **kwargs)  # type: ignore[arg-type]
    for window, boxes in oracle_tiles(objects, SCENE, SCENE, TILE, OVERLAP):
        merger.add(window, boxes, np.full(len(boxes), 0.9), np.zeros(len(boxes)))
    return merger.result()


def straddling(objects: np.ndarray, tile: int, overlap: int) -> int:
    """How many objects cross the interior edge of at least one tile."""
    n = 0
    for box in objects:
        for w in plan_tiles(SCENE, SCENE, tile, overlap):
            lo = np.array([w.col_off, w.row_off])
            hi = np.minimum(lo + tile, SCENE)
            crosses = ((box[:2] < lo) & (lo > 0)) | ((box[2:] > hi) & (hi < SCENE))
            overlapping = (box[:2] < hi).all() and (box[2:] > lo).all()
            if overlapping and crosses.any():
                n += 1
                break
    return n


def test_objects_straddling_seams_come_out_once_at_their_scene_position(trees: np.ndarray) -> None:
    assert straddling(trees, TILE, OVERLAP) > 20  # the seams matter for most crowns here
    result = merge_oracle(trees)
    got = result.boxes[np.lexsort(result.boxes.T[::-1])]
    want = trees[np.lexsort(trees.T[::-1])]
    np.testing.assert_array_equal(got, want)


def test_without_the_seam_rule_cut_pieces_survive_as_extra_boxes(trees: np.ndarray) -> None:
    result = merge_oracle(trees, edge_margin=0)
    assert len(result) > len(trees)


def test_an_object_no_tile_sees_whole_is_kept_in_pieces_not_lost() -> None:
    wide = np.array([[40.0, 100.0, 240.0, 130.0]])  # 200 px: wider than a tile and the overlap
    result = merge_oracle(wide)
    assert len(result) >= 1
    assert result.boxes[:, 0].min() == 40 and result.boxes[:, 2].max() == 240
    np.testing.assert_array_equal(
        result.boxes[:, [1, 3]], np.tile([100.0, 130.0], (len(result), 1))
    )


def test_two_classes_at_the_same_place_both_survive(trees: np.ndarray) -> None:
    box = trees[:1]
    merger = BoxMerger(SCENE, SCENE, tile=SCENE, overlap=0)
    merger.add(Window(0, 0, SCENE, SCENE), np.repeat(box, 3, axis=0), [0.9, 0.8, 0.7], [3, 5, 3])
    result = merger.result()
    assert result.labels.tolist() == [3, 5]
    np.testing.assert_allclose(result.scores, [0.9, 0.8])
    np.testing.assert_array_equal(result.boxes, np.repeat(box, 2, axis=0))


def test_equal_scores_give_the_same_result_whatever_the_order(trees: np.ndarray) -> None:
    base = trees[10]
    shifts = np.array([[0, 0], [3, 1], [-2, 4], [1, -3], [5, 5]], dtype=float)
    boxes = np.concatenate([base[None, :] + np.tile(shifts, 2)[k] for k in range(5)])
    results = []
    for seed in range(6):
        perm = np.random.default_rng(seed).permutation(len(boxes))
        merger = BoxMerger(SCENE, SCENE, tile=SCENE, overlap=0)
        merger.add(
            Window(0, 0, SCENE, SCENE),
            torch.from_numpy(boxes[perm]),
            torch.full((5,), 0.5),
            torch.zeros(5, dtype=torch.int64),
        )
        results.append(merger.result())
    for r in results[1:]:
        np.testing.assert_array_equal(r.boxes, results[0].boxes)
    # The documented tie-break: the top-most box (then the left-most) wins.
    top = boxes[np.lexsort((boxes[:, 0], boxes[:, 1]))[0]]
    np.testing.assert_array_equal(results[0].boxes[0], top)


@pytest.mark.parametrize("with_masks", [False, True])
def test_empty_input_gives_empty_arrays_of_the_right_kind(with_masks: bool) -> None:
    merger = BoxMerger(100, 137, tile=32, overlap=8)
    masks = np.zeros((0, 32, 32), dtype=bool) if with_masks else None
    merger.add(Window(0, 0, 32, 32), np.zeros((0, 4)), np.zeros(0), np.zeros(0), masks)
    for result in (merger.result(), BoxMerger(100, 137, tile=32, overlap=8).result()):
        assert result.boxes.shape == (0, 4) and result.boxes.dtype == np.float64
        assert result.scores.shape == (0,) and result.scores.dtype == np.float32
        assert result.labels.shape == (0,) and result.labels.dtype == np.int64
        assert len(result) == 0


def jittered(trees: np.ndarray, seed: int, copies: int = 3, ties: bool = False):
    """Real crowns with jittered duplicates and boxes on parts of them (as a detector gives),
    random scores and classes."""
    rng = np.random.default_rng(seed)
    # A part: 40-90 % of the crown's width and height, somewhere inside it.
    size = (trees[:, 2:] - trees[:, :2]) * rng.uniform(0.4, 0.9, (len(trees), 2))
    start = trees[:, :2] + (trees[:, 2:] - trees[:, :2] - size) * rng.uniform(0, 1, size.shape)
    parts = np.concatenate([start, start + size], axis=1)
    copies_ = [trees + rng.normal(0, 4, trees.shape) for _ in range(copies)]
    boxes = np.concatenate([trees, *copies_, parts])
    boxes = np.clip(boxes, 0, SCENE)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)]
    scores = rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32)
    if ties:
        scores = np.round(scores, 1).astype(np.float32)
    labels = rng.integers(0, 2, len(boxes))
    return boxes, scores, labels


def check_against_reference(
    result: Detections, boxes, scores, labels, iou_threshold, match: str = "iou"
) -> None:
    kept = reference_nms(boxes, scores, labels, iou_threshold, match)
    np.testing.assert_array_equal(result.boxes, boxes[kept])
    np.testing.assert_array_equal(result.scores, scores[kept])
    np.testing.assert_array_equal(result.labels, labels[kept])


@pytest.mark.parametrize("match", ["iou", "ios"])
@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 0.7])
@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, False), (2, True)])
def test_one_tile_agrees_with_the_reference_nms(trees, seed, ties, iou_threshold, match) -> None:
    boxes, scores, labels = jittered(trees, seed, ties=ties)
    merger = BoxMerger(SCENE, SCENE, tile=SCENE, overlap=0, iou_threshold=iou_threshold, match=match)
    merger.add(Window(0, 0, SCENE, SCENE), boxes, scores, labels)
    check_against_reference(merger.result(), boxes, scores, labels, iou_threshold, match)


def test_ios_drops_a_part_box_that_iou_keeps() -> None:
    crown, part = [100.0, 100.0, 140.0, 140.0], [100.0, 100.0, 120.0, 140.0]  # IoU 0.5, IoS 1
    results = {}
    for match in ("iou", "ios"):
        merger = BoxMerger(SCENE, SCENE, tile=SCENE, overlap=0, iou_threshold=0.6, match=match)
        merger.add(Window(0, 0, SCENE, SCENE), [crown, part], [0.9, 0.8], [0, 0])
        results[match] = merger.result().boxes.tolist()
    assert results == {"iou": [crown, part], "ios": [crown]}


def add_in_tiles(merger: BoxMerger, boxes, scores, labels, height: int, width: int) -> np.ndarray:
    """Give each box to the first tile that holds it whole; → the boxes given (scene pixels)."""
    windows = plan_tiles(height, width, TILE, OVERLAP)
    owner = np.full(len(boxes), -1)
    for k, w in reversed(list(enumerate(windows))):
        x0, y0 = w.col_off, w.row_off
        inside = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0)
        inside &= (boxes[:, 2] <= x0 + TILE) & (boxes[:, 3] <= y0 + TILE)
        owner[inside] = k
    for k, w in enumerate(windows):
        mine = owner == k
        merger.add(w, boxes[mine] - [w.col_off, w.row_off] * 2, scores[mine], labels[mine])
    return owner >= 0


@pytest.mark.parametrize("match", ["iou", "ios"])
@pytest.mark.parametrize("max_pending", [0, 50, 10_000])
@pytest.mark.parametrize(("seed", "ties"), [(0, False), (3, True)])
def test_tiles_and_early_decisions_agree_with_one_reference_nms_over_a_tall_scene(
    trees, seed, ties, max_pending, match
) -> None:
    # Eight copies of the crowns down a 3200-row scene: many tile rows, chains of overlaps.
    parts = [jittered(trees, seed + k, ties=ties) for k in range(8)]
    boxes = np.concatenate([p[0] + [0, SCENE * k, 0, SCENE * k] for k, p in enumerate(parts)])
    scores = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    height = 8 * SCENE
    merger = BoxMerger(
        height,
        SCENE,
        tile=TILE,
        overlap=OVERLAP,
        edge_margin=0,
        score_threshold=0.0,
        max_pending=max_pending,
        match=match,
    )
    given = add_in_tiles(merger, boxes, scores, labels, height, SCENE)
    assert given.mean() > 0.95
    check_against_reference(
        merger.result(), boxes[given], scores[given], labels[given], 0.5, match
    )
    if max_pending == 0:
        assert merger.peak_pending < given.sum() / 4  # decided boxes do not pile up


def test_a_suppression_chain_across_a_tile_row_change_is_decided_as_one_nms() -> None:
    """X < Y < B < C in score, each overlapping the next by IoU 1/3 (stacked 20-px boxes).

    One NMS keeps C, drops B, so keeps Y, which drops X. X, Y, B arrive in the first tile row; when
    the second row starts at row 80, X and Y are closed but depend on B, which depends on C.
    """
    rows = {"X": (50, 70), "Y": (60, 80), "B": (70, 90), "C": (80, 100)}
    box = {k: [100.0, y0, 120.0, y1] for k, (y0, y1) in rows.items()}
    merger = BoxMerger(
        SCENE, SCENE, tile=TILE, overlap=OVERLAP, iou_threshold=0.3, edge_margin=0, max_pending=0
    )
    merger.add(Window(0, 0, TILE, TILE), [box["X"], box["Y"], box["B"]], [0.6, 0.7, 0.8], [0, 0, 0])
    c = np.array(box["C"]) - [0, 80, 0, 80]
    merger.add(Window(0, 80, TILE, TILE), [c], [0.9], [0])
    result = merger.result()
    np.testing.assert_array_equal(result.boxes, [box["C"], box["Y"]])
    everything = np.array([box[k] for k in "XYBC"])
    scores, labels = np.array([0.6, 0.7, 0.8, 0.9], np.float32), np.zeros(4, np.int64)
    check_against_reference(result, everything, scores, labels, 0.3)


def test_score_threshold_and_max_detections(trees: np.ndarray) -> None:
    boxes, scores, labels = jittered(trees, 5)
    merger = BoxMerger(SCENE, SCENE, tile=SCENE, overlap=0, score_threshold=0.5, max_detections=7)
    merger.add(Window(0, 0, SCENE, SCENE), boxes, scores, labels)
    result = merger.result()
    above = scores >= 0.5
    kept = reference_nms(boxes[above], scores[above], labels[above], 0.5)[:7]
    np.testing.assert_array_equal(result.boxes, boxes[above][kept])
    assert len(result) == 7 and (result.scores >= 0.5).all()
    assert (np.diff(result.scores) <= 0).all()


def test_max_detections_zero_keeps_nothing(trees: np.ndarray) -> None:
    merger = BoxMerger(SCENE, SCENE, tile=SCENE, overlap=0, max_detections=0)
    merger.add(Window(0, 0, SCENE, SCENE), trees, np.ones(len(trees)), np.zeros(len(trees)))
    assert len(merger.result()) == 0


def test_boxes_are_clipped_to_their_tile_and_the_scene() -> None:
    # A 100 x 137 scene inside one 160-pixel tile: the tile runs past the scene.
    merger = BoxMerger(100, 137, tile=160, overlap=0)
    boxes = np.array([[120.0, 90.0, 150.0, 130.0], [-5.0, -5.0, 10.0, 10.0], [140.0, 0, 150, 10]])
    merger.add(Window(0, 0, 160, 160), boxes, [0.9, 0.8, 0.7], [0, 0, 0])
    result = merger.result()
    np.testing.assert_array_equal(result.boxes, [[120, 90, 137, 100], [0, 0, 10, 10]])
    # Inner tiles: a box reaching past its tile is cut at the tile, then shifted into the scene.
    merger = BoxMerger(SCENE, SCENE, tile=TILE, overlap=OVERLAP, edge_margin=0)
    merger.add(Window(80, 80, TILE, TILE), [[10.0, 20.0, 170.0, 30.0]], [0.9], [1])
    np.testing.assert_array_equal(merger.result().boxes, [[90, 100, 240, 110]])


def test_masks_follow_their_boxes_cropped(trees: np.ndarray) -> None:
    merger = BoxMerger(SCENE, SCENE, tile=TILE, overlap=OVERLAP)
    window = Window(80, 80, TILE, TILE)
    inside = trees[(trees[:, :2] >= 84).all(1) & (trees[:, 2:] <= 236).all(1)]
    assert len(inside) >= 3
    local = inside - [80, 80, 80, 80]
    masks = np.zeros((len(local), TILE, TILE), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, local.astype(int), strict=True):
        m[y0:y1, x0:x1] = True
    merger.add(window, local, np.linspace(0.9, 0.5, len(local)), np.zeros(len(local)), masks)
    result = merger.result()
    assert result.masks is not None and len(result.masks) == len(result)
    for box, (win, piece) in zip(result.boxes, result.masks, strict=True):
        assert (
            win.col_off,
            win.row_off,
            win.col_off + win.width,
            win.row_off + win.height,
        ) == tuple(box)
        assert piece.shape == (win.height, win.width) and piece.all()


def test_misuse_is_a_usage_error() -> None:
    def make() -> BoxMerger:
        return BoxMerger(100, 137, tile=32, overlap=8)

    one = (np.array([[1.0, 1.0, 5.0, 5.0]]), [0.9], [0])
    merger = make()
    merger.add(Window(0, 22, 32, 32), *one)
    with pytest.raises(DvisUsageError, match="plan_tiles order"):
        merger.add(Window(0, 0, 32, 32), *one)
    with pytest.raises(DvisUsageError, match="not a tile"):
        make().add(Window(3, 0, 32, 32), *one)
    with pytest.raises(DvisUsageError, match="1 boxes, 2 scores"):
        make().add(Window(0, 0, 32, 32), one[0], [0.9, 0.8], [0])
    merger = make()
    merger.add(Window(0, 0, 32, 32), *one)
    with pytest.raises(DvisUsageError, match="masks for every tile or for none"):
        merger.add(Window(21, 0, 32, 32), *one, np.ones((1, 32, 32), dtype=bool))
    merger.result()
    with pytest.raises(DvisUsageError, match="after its result"):
        merger.add(Window(21, 0, 32, 32), *one)
    with pytest.raises(DvisUsageError, match="--iou-threshold 1.5"):
        BoxMerger(100, 137, tile=32, overlap=8, iou_threshold=1.5)
    with pytest.raises(DvisUsageError, match="--nms-match 'giou'"):
        BoxMerger(100, 137, tile=32, overlap=8, match="giou")
