"""Augmentations keep labels correct: boxes, label masks and instance masks follow the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynamicvis_cli.data.augment import (
    AugmentConfig,
    Example,
    colour_jitter,
    flip_rotate,
    sample_window,
    window_boxes,
)
from dynamicvis_cli.data.dataset import TaskDataset, rasterise_shapes
from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.geo.read import RasterSource, normalise
from tests.train.fixtures import DUBAI_PALETTE, make_coco_crops, make_dubai_pairs


def box_of(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_flips_and_quarter_turns_move_boxes_with_their_pixels(hflip: bool, vflip: bool, k: int) -> None:
    size = 16
    boxes = np.array([[2, 3, 7, 12], [9, 0, 16, 4]], dtype=np.float64)
    masks = np.zeros((2, size, size), np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x2] = 1
    ramp = np.arange(size * size).reshape(size, size) / 256
    image = np.stack([masks[0] * 1.0, masks[1] * 2.0, ramp]).astype(np.float32)
    ex = Example(image=image, valid=np.ones((size, size), bool), mask=masks[0] + 2 * masks[1],
                 boxes=boxes, labels=np.array([0, 1]), masks=masks)
    out = flip_rotate(ex, hflip=hflip, vflip=vflip, k=k)
    for i in range(2):
        assert out.boxes[i].tolist() == box_of(out.masks[i])  # type: ignore[index]
        assert (out.image[i] == out.masks[i] * (i + 1)).all()  # type: ignore[index]
        assert ((out.mask == i + 1) == out.masks[i].astype(bool)).all()  # type: ignore[union-attr,index]
    expect = np.rot90(image[2][::-1] if vflip else image[2], k) if not hflip else None
    if expect is not None:
        assert np.array_equal(out.image[2], expect)


def test_window_scale_and_crop_keep_boxes_on_their_objects() -> None:
    boxes = np.array([[10, 10, 30, 20], [90, 90, 120, 110], [-5, 40, 6, 50]], dtype=np.float64)
    labels = np.array([0, 1, 2])
    shapes = [[np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])] for x1, y1, x2, y2 in boxes]
    window = (0, 0, 100, 100)  # side 100 → 50 px: scale 0.5
    kept_boxes, kept_labels, keep = window_boxes(boxes, labels, window, 50, min_visible=0.5)
    # the third box is 6/11 inside: kept, clipped at the left edge
    assert kept_labels.tolist() == [0, 2] and kept_boxes.tolist() == [[5, 5, 15, 10], [0, 20, 3, 25]]
    # the second box is 1/6 inside (10x10 of 30x20): dropped at 0.5, kept (clipped) at 0.1
    b2, l2, keep2 = window_boxes(boxes, labels, window, 50, min_visible=0.1)
    assert l2.tolist() == [0, 1, 2]
    assert b2[1].tolist() == [45, 45, 50, 50] and b2[2].tolist() == [0, 20, 3, 25]
    masks = rasterise_shapes([shapes[i] for i in keep2], window, 50)
    for m, b in zip(masks, b2):
        assert box_of(m) == pytest.approx(b.tolist(), abs=1)


def test_sample_window_stays_on_the_image_or_contains_it() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y, w, h = sample_window((0, 0, 300, 80), 64, (0.5, 2.0), rng)
        assert w == h and 32 <= w <= 128
        assert 0 <= x <= 300 - w
        assert (0 <= y <= 80 - h) if h <= 80 else (80 - h <= y <= 0)


def test_colour_jitter_leaves_padding_at_zero() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((3, 8, 8)).astype(np.float32)
    valid = np.ones((8, 8), bool)
    valid[:, 6:] = False
    img[:, ~valid] = 0
    out = colour_jitter(img, valid, 0.5, rng, clip=True)
    assert (out[:, ~valid] == 0).all() and out.min() >= 0 and out.max() <= 1 and not np.allclose(out, img)


def test_unaugmented_items_are_normalised_exactly_like_inference(tmp_path: Path) -> None:
    root = make_dubai_pairs(tmp_path / "seg", n=1)
    spec = open_dataset(root, "segment", palette=DUBAI_PALETTE)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ds = TaskDataset(spec, tile_size=64, bands=[1, 2, 3], mean=mean, std=std, augment=None)
    item = ds[0]
    from rasterio.windows import Window

    with RasterSource(spec.records[0].image) as src:
        raw, _ = src.read(Window(0, 0, 64, 64), [1, 2, 3])
        expected = normalise(raw, src.dtype, mean, std)
    assert np.allclose(item["image"].numpy(), expected, atol=1e-6)
    assert item["mask"].shape == (64, 64) and int(item["mask"].max()) < 6


def test_training_items_depend_only_on_seed_epoch_and_index(tmp_path: Path) -> None:
    coco = make_coco_crops(tmp_path / "coco", n=2, size=96)
    spec = open_dataset(coco, "instance")

    def make(seed: int) -> TaskDataset:
        return TaskDataset(spec, tile_size=64, bands=[1, 2, 3], mean=[0.5] * 3, std=[0.2] * 3,
                           augment=AugmentConfig(scale=(0.5, 1.5), colour=0.2), seed=seed)

    a, b = make(0)[(3, 1)], make(0)[(3, 1)]
    for k in ("image", "boxes", "labels", "masks"):
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    c = make(0)[(4, 1)]
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())
    assert not np.array_equal(a["image"].numpy(), make(1)[(3, 1)]["image"].numpy())
    for item in (a, c):
        for box, m in zip(item["boxes"], item["masks"]):
            if m.any():  # the rasterised polygon lies inside its (clipped) box
                bx = box_of(m.numpy())
                assert bx[0] >= box[0] - 1 and bx[1] >= box[1] - 1
                assert bx[2] <= box[2] + 1 and bx[3] <= box[3] + 1


def test_object_crops_contain_their_object() -> None:
    rng = np.random.default_rng(2)
    box = (700.0, 300.0, 730.0, 340.0)
    for _ in range(100):
        x, y, w, h = sample_window((0, 0, 1000, 800), 128, (0.75, 1.33), rng, around=box)
        assert x <= 700 and x + w >= 730 and y <= 300 and y + h >= 340
        assert 0 <= x <= 1000 - w and 0 <= y <= 800 - h
