"""Task metrics for logs and evaluation: accuracy/F1 and IoU from a confusion matrix, box AP.

Plain numpy; reusable by ``dvis evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dynamicvis_cli.data.records import IGNORE_INDEX


class ConfusionMatrix:
    """Counts ``m[true, pred]`` over pixels or images; ``ignore_index`` targets are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.k = num_classes
        self.ignore = ignore_index
        self.m = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        p = np.asarray(pred).reshape(-1).astype(np.int64)
        t = np.asarray(target).reshape(-1).astype(np.int64)
        keep = (t != self.ignore) & (t >= 0) & (t < self.k)
        self.m += np.bincount(t[keep] * self.k + p[keep], minlength=self.k * self.k).reshape(self.k, self.k)

    def scores(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """accuracy, macro precision/recall/F1, mean IoU and per-class values (NaN-free: classes
        absent from targets and predictions are left out of the means)."""
        m = self.m.astype(np.float64)
        tp = np.diag(m)
        support, predicted = m.sum(1), m.sum(0)
        present = (support + predicted) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / predicted, 0.0)
            recall = np.where(support > 0, tp / support, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            iou = np.where(support + predicted - tp > 0, tp / (support + predicted - tp), 0.0)
        total = m.sum()
        names = list(classes) if classes else [str(i) for i in range(self.k)]

        def mean(v: NDArray[np.float64]) -> float:
            return float(v[present].mean()) if present.any() else 0.0

        return {
            "accuracy": float(tp.sum() / total) if total else 0.0,
            "precision": mean(precision), "recall": mean(recall), "f1": mean(f1), "miou": mean(iou),
            "per_class": {n: {"precision": float(precision[i]), "recall": float(recall[i]),
                              "f1": float(f1[i]), "iou": float(iou[i]), "support": int(support[i])}
                          for i, n in enumerate(names)},
            "count": int(total),
        }


def box_iou(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """(N, M) IoU of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    out: NDArray[np.float64] = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)
    return out


def average_precision(predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]],
                      num_classes: int, iou_threshold: float = 0.5) -> dict[str, Any]:
    """VOC-style AP (all-point interpolation) per class at one IoU threshold, and their mean.

    Detections are matched greedily, best score first, to the unmatched target of their class and
    image with the highest IoU (at least ``iou_threshold``).

    Args:
        predictions: per image ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,) 0-based.
        targets: per image ``boxes`` (M, 4), ``labels`` (M,) 0-based.

    Returns:
        ``map`` (mean over classes with targets), ``per_class`` AP, and ``recall`` (overall).
    """
    scores: list[list[NDArray[np.float64]]] = [[] for _ in range(num_classes)]
    hits: list[list[NDArray[np.bool_]]] = [[] for _ in range(num_classes)]
    n_gt = np.zeros(num_classes, dtype=np.int64)
    for pred, tgt in zip(predictions, targets):
        gt_boxes = np.asarray(tgt["boxes"], dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(tgt["labels"]).reshape(-1)
        p_boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        p_scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        p_labels = np.asarray(pred["labels"]).reshape(-1)
        n_gt += np.bincount(gt_labels.astype(np.int64), minlength=num_classes)[:num_classes]
        for c in np.unique(p_labels):
            c = int(c)
            if not 0 <= c < num_classes:
                continue
            sel = p_labels == c
            order = np.argsort(-p_scores[sel], kind="stable")
            boxes, sc = p_boxes[sel][order], p_scores[sel][order]
            gt = gt_boxes[gt_labels == c]
            hit = np.zeros(len(sc), dtype=bool)
            if len(gt):
                ious = box_iou(boxes, gt)
                used = np.zeros(len(gt), dtype=bool)
                for i in np.flatnonzero(ious.max(axis=1) >= iou_threshold):  # the others miss anyway
                    row = np.where(used, -1.0, ious[i])
                    j = int(row.argmax())
                    if row[j] >= iou_threshold:
                        used[j] = hit[i] = True
            scores[c].append(sc)
            hits[c].append(hit)
    aps: dict[int, float] = {}
    found = 0
    for c in range(num_classes):
        if n_gt[c] == 0:
            continue
        sc = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        ht = np.concatenate(hits[c]) if hits[c] else np.zeros(0, dtype=bool)
        order = np.argsort(-sc, kind="stable")
        ht = ht[order].astype(np.float64)
        found += int(ht.sum())
        tp, fp = np.cumsum(ht), np.cumsum(1 - ht)
        recall = tp / n_gt[c]
        precision = tp / np.maximum(tp + fp, 1e-12)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        idx = np.flatnonzero(mrec[1:] != mrec[:-1])
        aps[c] = float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))
    total = int(n_gt.sum())
    return {"map": float(np.mean(list(aps.values()))) if aps else 0.0,
            "per_class": aps, "recall": found / total if total else 0.0}
