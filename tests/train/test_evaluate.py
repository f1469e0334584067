"""The metrics of ``dvis evaluate``: COCO AP (hand-computed cases, ground truth against itself
scores 1.0) and the dense-task summaries of a confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from dynamicvis_cli.evaluate.coco import coco_ap, mask_iou
from dynamicvis_cli.evaluate.tasks import dense_scores
from dynamicvis_cli.train.metrics import ConfusionMatrix

TARGETS = [
    # 100 px² (small) and 6000 px² (medium)
    {"boxes": np.array([[0, 0, 10, 10], [20, 20, 120, 80.0]]), "labels": np.array([0, 1])},
    {"boxes": np.array([[5, 5, 50, 50.0]]), "labels": np.array([0])},  # 2025 px²: medium
]


def _masks_of(boxes: np.ndarray, size: int = 128) -> np.ndarray:
    out = np.zeros((len(boxes), size, size), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        out[i, y0:y1, x0:x1] = True
    return out


def test_ground_truth_against_itself_scores_one() -> None:
    preds = [{**t, "scores": np.linspace(1, 0.5, len(t["labels"]))} for t in TARGETS]
    r = coco_ap(preds, TARGETS, 2)
    assert r["ap"] == r["ap50"] == r["ap75"] == r["ap_small"] == r["ap_medium"] == r["ar100"] == 1.0
    assert r["ap_large"] == -1.0  # no target of 96² px or more: COCOeval's -1
    assert r["per_class_ap"] == {0: 1.0, 1: 1.0} and r["targets"] == 3
    seg_t = [{**t, "masks": _masks_of(t["boxes"])} for t in TARGETS]
    seg_p = [{**t, "scores": np.ones(len(t["labels"]))} for t in seg_t]
    assert coco_ap(seg_p, seg_t, 2, kind="segm")["ap"] == 1.0


def test_hand_computed_ap_thresholds_and_area_ranges() -> None:
    # class 0: a higher-scored miss, then a hit of IoU 100/120 = 0.83 on the small target;
    # the medium class-0 target and the class-1 target are never found
    preds = [{"boxes": np.array([[0, 0, 10, 12.0], [0, 0, 1, 1.0]]), "labels": np.array([0, 0]),
              "scores": np.array([0.9, 0.95])},
             {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}]
    r = coco_ap(preds, TARGETS, 2)
    # precision 1/2 up to recall 1/2 (51 of 101 recall points) at IoU 0.50..0.80 (7 of 10)
    class0 = 51 * 0.5 / 101
    assert r["ap50"] == pytest.approx(class0 / 2) and r["ap75"] == pytest.approx(class0 / 2)
    assert r["ap"] == pytest.approx(class0 * 7 / 10 / 2)
    assert r["per_class_ap50"] == {0: pytest.approx(class0), 1: 0.0}
    assert r["per_class_ap"][0] == pytest.approx(class0 * 7 / 10)
    # small: class 0 has one small target (recall 1 at precision 1/2); class 1 has none (left out)
    assert r["ap_small"] == pytest.approx(0.5 * 7 / 10)
    assert r["ap_medium"] == 0.0 and r["ar100"] == pytest.approx((0.5 * 7 / 10 + 0) / 2)


def test_duplicates_and_wrong_class_are_false_positives() -> None:
    t = [TARGETS[0]]
    dup = [{"boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 10.0], [20, 20, 120, 80]]),
            "labels": np.array([0, 0, 0]), "scores": np.array([0.9, 0.8, 0.7])}]
    r = coco_ap(dup, t, 2)
    assert r["per_class_ap"][0] == 1.0  # the duplicate ranks after the hit: precision at recall 1 is 1
    assert r["per_class_ap"][1] == 0.0  # a class-1 target found only by a class-0 box
    swapped = [{"boxes": np.array([[0, 0, 10, 10.0]]), "labels": np.array([0]), "scores": np.array([0.1])},
               {"boxes": np.array([[0, 0, 10, 10.0]]), "labels": np.array([0]), "scores": np.array([0.9])}]
    # a confident false positive (on an image without that target) ranked first halves precision
    r = coco_ap(swapped, [TARGETS[0], {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}], 2)
    assert r["per_class_ap"][0] == pytest.approx(0.5)


def test_mask_iou() -> None:
    a = _masks_of(np.array([[0, 0, 10, 10]]), 32)
    b = _masks_of(np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]), 32)
    assert mask_iou(a, b) == pytest.approx(np.array([[1.0, 50 / 150, 0.0]]))
    assert mask_iou(a[:0], b).shape == (0, 3)


def test_dense_scores_perfect_and_target_class() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, size=(4, 16, 16))
    cm = ConfusionMatrix(2)
    cm.update(truth, truth)
    s = dense_scores(cm, ["unchanged", "changed"], "change")
    assert s["f1"] == s["iou"] == s["precision"] == s["recall"] == s["miou"] == s["accuracy"] == 1.0
    assert s["target_class"] == "changed"
    pred = truth.copy()
    pred[0] = 1 - pred[0]  # a quarter of the pixels wrong
    cm = ConfusionMatrix(3)
    cm.update(pred, truth)
    s = dense_scores(cm, ["a", "b", "c"], "segment", target_class="b")
    b = s["per_class"]["b"]
    assert s["target_iou"] == b["iou"] and s["target_f1"] == b["f1"]
    assert s["target_iou"] == pytest.approx(b["f1"] / (2 - b["f1"]))  # IoU = F1 / (2 - F1)
    assert s["accuracy"] == pytest.approx(0.75) and "target_class" not in dense_scores(cm, ["a", "b", "c"],
                                                                                      "segment")
    k = dense_scores(cm, ["a", "b", "c"], "classify")
    assert "miou" not in k and k["count"] == truth.size
