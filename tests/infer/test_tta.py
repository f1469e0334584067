"""Test-time augmentation: D4 transforms, their inverses for maps and boxes, and the averaging."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.tta import D4, dense_probabilities, detections, transforms


def reference_point(t: D4, x: float, y: float, size: int) -> tuple[float, float]:
    """Where ``t`` sends the input point (x, y) (pixel corners), written out by hand."""
    for _ in range(t.k % 4):
        x, y = y, size - x  # torch.rot90(k=1): input (x, y) → output (y, size - x)
    if t.flip:
        x = size - x
    return x, y


def test_modes() -> None:
    assert transforms("none") == [D4()]
    flips = transforms("flips")
    assert len(flips) == 3 and flips[0].identity
    d4 = transforms("d4")
    assert len(set(d4)) == 8 and d4[0].identity
    with pytest.raises(DvisUsageError, match="--tta spin"):
        transforms("spin")


def test_every_transform_is_undone_and_all_eight_differ() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    seen = set()
    for t in transforms("d4"):
        y = t.apply(x)
        assert torch.equal(t.invert(y), x)
        seen.add(tuple(y.flatten().tolist()))
    assert len(seen) == 8


def test_rotations_need_square_inputs() -> None:
    x = torch.zeros(1, 1, 4, 6)
    assert D4(2, True).apply(x).shape == x.shape  # flips and half turns are fine
    with pytest.raises(DvisUsageError, match="square"):
        D4(1).apply(x)


@pytest.mark.parametrize("t", transforms("d4"), ids=str)
def test_box_inverse_matches_the_mask_it_came_from(t: D4) -> None:
    size = 16
    rng = np.random.default_rng(0)
    for _ in range(20):
        x1, y1 = (int(v) for v in rng.integers(0, size - 2, 2))
        x2, y2 = x1 + int(rng.integers(1, size - x1)), y1 + int(rng.integers(1, size - y1))
        mask = torch.zeros(1, 1, size, size)
        mask[..., y1:y2, x1:x2] = 1
        moved = t.apply(mask)[0, 0]
        rows, cols = torch.nonzero(moved, as_tuple=True)
        found = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float64)
        assert t.invert_boxes(found, size).tolist() == [[x1, y1, x2, y2]]


@pytest.mark.parametrize("t", transforms("d4"), ids=str)
def test_box_inverse_against_a_hand_written_point_map(t: D4) -> None:
    size = 37
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, size, (50, 2, 2))  # two corners (x, y) per box
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    moved = []
    for x1, y1, x2, y2 in boxes:
        corners = [reference_point(t, x, y, size) for x, y in itertools.product((x1, x2), (y1, y2))]
        xs, ys = zip(*corners)
        moved.append([min(xs), min(ys), max(xs), max(ys)])
    back = t.invert_boxes(torch.tensor(moved, dtype=torch.float64), size).numpy()
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-12)


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A D4-equivariant 'model': per-pixel logits from the bands."""
    return torch.stack([x[:, 0] - x[:, 1], x[:, 2] * 0.5], dim=1)


def test_an_equivariant_model_is_unchanged_by_tta() -> None:
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    one = dense_probabilities(pointwise, [x], transforms("none"))
    torch.testing.assert_close(one, pointwise(x).softmax(dim=1), rtol=0, atol=0)
    for mode in ("flips", "d4"):
        torch.testing.assert_close(dense_probabilities(pointwise, [x], transforms(mode)), one,
                                   rtol=1e-6, atol=1e-7)


def test_tta_averages_the_passes_of_a_model_that_sees_orientation() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 2, 5, padding=2)  # two inputs (a change pair), stacked
    x, y = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)

    def model(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return conv(torch.cat([a, b], dim=1))

    with torch.no_grad():
        got = dense_probabilities(model, [x, y], transforms("flips"))
        want = sum(t.invert(model(t.apply(x), t.apply(y)).softmax(dim=1)) for t in transforms("flips")) / 3
        one = dense_probabilities(model, [x, y], transforms("none"))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got, one, atol=1e-3)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(2, 16, 16))


def test_boxes_of_every_pass_come_back_onto_the_tile() -> None:
    size = 32
    image = torch.zeros(2, 3, size, size)
    image[0, :, 4:10, 20:29] = 1  # x 20..29, y 4..10
    image[1, :, 15:31, 2:5] = 1  # x 2..5, y 15..31
    seen = []

    def detector(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in batch:
            rows, cols = torch.nonzero(img[0] > 0.5, as_tuple=True)
            box = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]],
                               dtype=torch.float32)
            seen.append(box)
            out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1]),
                        "masks": (img[:1] > 0.5).float()[None]})
        return out

    results = detections(detector, image, transforms("d4"))
    assert len(seen) == 16 and len({tuple(b.flatten().tolist()) for b in seen}) > 2  # passes differ
    expected = [[20, 4, 29, 10], [2, 15, 5, 31]]
    for r, want, img in zip(results, expected, image):
        assert r["boxes"].tolist() == [want] * 8
        assert r["scores"].shape == (8,) and r["labels"].tolist() == [1] * 8
        for m in r["masks"]:  # instance masks are brought back too
            assert torch.equal(m[0] > 0.5, img[0] > 0.5)
