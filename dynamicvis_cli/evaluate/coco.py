"""COCO average precision (AP, AP50, AP75, AP_small/medium/large) for boxes and masks.

A numpy re-implementation of pycocotools' ``COCOeval`` (``evaluateImg`` + ``accumulate``), so
scores are comparable with published COCO-style numbers without the dependency:

* per image and class, detections sorted by score and cut to ``max_dets`` (100);
* at each IoU threshold 0.50:0.05:0.95 a detection matches the unmatched target of highest IoU
  (at least the threshold); targets outside the area range are *ignored* (matching one neither
  helps nor hurts), and so are unmatched detections outside the range;
* per class, precision at the 101 recall points 0:0.01:1 of the monotone (right-max) precision
  curve, averaged; AP is the mean over IoU thresholds and over classes that have targets.

Area ranges (pixels², of the image as the model saw it): small < 32², medium 32²–96², large ≥ 96².
Box areas are w × h; for masks, pixel counts. Crowd annotations are not modelled (dvis readers
keep none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dynamicvis_cli.train.metrics import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
               "large": (96.0**2, 1e10)}


def mask_iou(a: NDArray[Any], b: NDArray[Any]) -> NDArray[np.float64]:
    """(N, M) IoU of binary masks (N, H, W) and (M, H, W)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float64)
    fb = b.reshape(len(b), -1).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    out: NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return out


def _areas(item: dict[str, Any], kind: str) -> NDArray[np.float64]:
    if kind == "segm":
        m = np.asarray(item["masks"])
        counts: NDArray[np.float64] = m.reshape(len(m), -1).astype(bool).sum(1).astype(np.float64)
        return counts
    b = np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _match(ious: NDArray[np.float64], gt_ignore: NDArray[np.bool_],
           thr: float) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """COCOeval's greedy matching of score-sorted detections to targets (non-ignored first).

    Returns (matched, matched-to-an-ignored-target) per detection."""
    n_dt, n_gt = ious.shape
    gt_used = np.zeros(n_gt, dtype=bool)
    matched = np.zeros(n_dt, dtype=bool)
    to_ignored = np.zeros(n_dt, dtype=bool)
    for d in range(n_dt):
        best, best_iou = -1, min(thr, 1 - 1e-10)
        for g in range(n_gt):
            if gt_used[g]:
                continue
            if best > -1 and not gt_ignore[best] and gt_ignore[g]:
                break  # targets are sorted non-ignored first: stop at the ignored ones
            if ious[d, g] < best_iou:
                continue
            best, best_iou = g, ious[d, g]
        if best > -1:
            gt_used[best] = True
            matched[d] = True
            to_ignored[d] = gt_ignore[best]
    return matched, to_ignored


def coco_ap(predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], num_classes: int,
            *, kind: str = "bbox", max_dets: int = 100) -> dict[str, Any]:
    """COCO AP of per-image predictions against targets.

    Args:
        predictions: per image ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,) 0-based, and
            ``masks`` (N, H, W) binary for ``kind="segm"``.
        targets: per image ``boxes`` (M, 4), ``labels`` (M,), and ``masks`` (M, H, W) for segm.
        kind: ``bbox`` (box IoU) or ``segm`` (mask IoU).

    Returns:
        ``ap`` (0.50:0.95), ``ap50``, ``ap75``, ``ap_small``, ``ap_medium``, ``ap_large`` (-1 when no
        class has a target in that range, as COCOeval), ``ar100`` (mean recall at 100 detections)
        ``per_class_ap`` and ``per_class_ap50`` (classes with targets).
    """
    if kind not in ("bbox", "segm"):
        raise ValueError(f"kind must be bbox or segm, not {kind!r}")
    iou_fn: Callable[[Any, Any], NDArray[np.float64]] = (
        (lambda d, g: box_iou(np.asarray(d["boxes"], np.float64).reshape(-1, 4),
                              np.asarray(g["boxes"], np.float64).reshape(-1, 4)))
        if kind == "bbox" else (lambda d, g: mask_iou(np.asarray(d["masks"]), np.asarray(g["masks"]))))
    n_t = len(IOU_THRESHOLDS)
    # per area range, per class: lists of (scores, matched (T, N), ignored (T, N)) and target count
    acc: dict[str, list[list[tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.bool_]]]]] = {
        a: [[] for _ in range(num_classes)] for a in AREA_RANGES}
    n_gt = {a: np.zeros(num_classes, dtype=np.int64) for a in AREA_RANGES}
    for pred, tgt in zip(predictions, targets):
        p_labels = np.asarray(pred["labels"]).reshape(-1).astype(np.int64)
        g_labels = np.asarray(tgt["labels"]).reshape(-1).astype(np.int64)
        p_scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        p_area, g_area = _areas(pred, kind), _areas(tgt, kind)
        ious_all = iou_fn(pred, tgt)
        for c in set(p_labels.tolist()) | set(g_labels.tolist()):
            if not 0 <= c < num_classes:
                continue
            d_idx = np.flatnonzero(p_labels == c)
            d_idx = d_idx[np.argsort(-p_scores[d_idx], kind="mergesort")][:max_dets]
            g_idx = np.flatnonzero(g_labels == c)
            for name, (lo, hi) in AREA_RANGES.items():
                g_ign = (g_area[g_idx] < lo) | (g_area[g_idx] > hi)
                order = np.argsort(g_ign, kind="mergesort")  # non-ignored first
                g_sorted, g_ign = g_idx[order], g_ign[order]
                n_gt[name][c] += int((~g_ign).sum())
                ious = ious_all[np.ix_(d_idx, g_sorted)] if len(d_idx) and len(g_sorted) else \
                    np.zeros((len(d_idx), len(g_sorted)))
                d_out = (p_area[d_idx] < lo) | (p_area[d_idx] > hi)
                matched = np.zeros((n_t, len(d_idx)), dtype=bool)
                ignored = np.zeros((n_t, len(d_idx)), dtype=bool)
                for t, thr in enumerate(IOU_THRESHOLDS):
                    m, to_ign = _match(ious, g_ign, float(thr))
                    matched[t], ignored[t] = m, to_ign | (~m & d_out)
                acc[name][c].append((p_scores[d_idx], matched, ignored))

    def summarise(name: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(T, K) precision averaged over recall points, (T, K) recall; -1 where no targets."""
        prec = -np.ones((n_t, num_classes))
        rec = -np.ones((n_t, num_classes))
        for c in range(num_classes):
            npig = n_gt[name][c]
            if npig == 0:
                continue
            parts = acc[name][c]
            scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([p[1] for p in parts], axis=1)[:, order] if parts else \
                np.zeros((n_t, 0), bool)
            ignored = np.concatenate([p[2] for p in parts], axis=1)[:, order] if parts else \
                np.zeros((n_t, 0), bool)
            tps = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
            fps = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
            for t in range(n_t):
                tp, fp = tps[t], fps[t]
                rc = tp / npig
                pr = tp / np.maximum(tp + fp, np.spacing(1))
                rec[t, c] = rc[-1] if len(rc) else 0.0
                pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
                inds = np.searchsorted(rc, RECALL_POINTS, side="left")
                q = np.zeros(len(RECALL_POINTS))
                ok = inds < len(pr)
                q[ok] = pr[inds[ok]]
                prec[t, c] = q.mean()
        return prec, rec

    def mean(v: NDArray[np.float64]) -> float:
        v = v[v > -1]
        return float(v.mean()) if v.size else -1.0

    prec_all, rec_all = summarise("all")
    out: dict[str, Any] = {"ap": mean(prec_all), "ap50": mean(prec_all[0]), "ap75": mean(prec_all[5])}
    for name in ("small", "medium", "large"):
        out[f"ap_{name}"] = mean(summarise(name)[0])
    out["ar100"] = mean(rec_all)
    out["per_class_ap"] = {c: float(prec_all[:, c].mean()) for c in range(num_classes) if n_gt["all"][c]}
    out["per_class_ap50"] = {c: float(prec_all[0, c]) for c in range(num_classes) if n_gt["all"][c]}
    out["targets"] = int(n_gt["all"].sum())
    out["detections"] = int(sum(len(np.asarray(p["scores"]).reshape(-1)) for p in predictions))
    return out
