"""Task metrics of a model on a dataset (no augmentation): what training logs for validation.

Classification runs each image at its own size (as ``dvis classify``); dense tasks and
detection run on a grid of ``tile_size`` tiles. Metrics come from :mod:`.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dynamicvis_cli.data.dataset import TaskDataset, collate
from dynamicvis_cli.infer.runner import autocast
from dynamicvis_cli.train.metrics import ConfusionMatrix, average_precision, box_iou


def matched_mask_iou(det: dict[str, Any], boxes: torch.Tensor, labels: torch.Tensor,
                     masks: torch.Tensor) -> list[float]:
    """Per target instance: the mask IoU of the best-scoring detection of its class whose box
    overlaps it by IoU >= 0.5 (0 when none does). Predicted masks are thresholded at 0.5."""
    out = []
    pboxes = det["boxes"].float().cpu().numpy()
    plabels = (det["labels"] - 1).cpu().numpy()
    scores = det["scores"].float().cpu().numpy()
    pmasks = det["masks"][:, 0].float().cpu().numpy() >= 0.5 if "masks" in det else None
    ious = box_iou(boxes.numpy().astype(np.float64), pboxes.astype(np.float64))
    for t in range(len(boxes)):
        cand = np.flatnonzero((ious[t] >= 0.5) & (plabels == int(labels[t])))
        if len(cand) == 0 or pmasks is None:
            out.append(0.0)
            continue
        best = cand[np.argmax(scores[cand])]
        gt = masks[t].numpy().astype(bool)
        union = np.logical_or(gt, pmasks[best]).sum()
        out.append(float(np.logical_and(gt, pmasks[best]).sum() / union) if union else 0.0)
    return out


@torch.no_grad()
def evaluate(model: Any, dataset: TaskDataset, classes: Sequence[str], *, device: torch.device,
             batch_size: int = 4, precision: str = "fp32", workers: int = 0) -> dict[str, Any]:
    """Metrics of ``model`` (a task model from :mod:`dynamicvis_cli.nn.tasks`) on ``dataset``.

    Returns:
        classify: accuracy, f1 (macro), per-class; segment: miou, accuracy, per-class IoU/F1;
        change: f1, iou, precision, recall of the change class (class 1) and accuracy;
        detect/instance: map50 (box AP at IoU 0.5), recall50; instance also mask_iou (mean over
        target instances of :func:`matched_mask_iou`).
    """
    was_training = model.training
    model.eval()
    task = dataset.task
    bs = 1 if task == "classify" else batch_size
    loader = DataLoader(dataset, batch_size=bs, shuffle=False, num_workers=workers, collate_fn=collate)
    cm = ConfusionMatrix(len(classes))
    mask_ious: list[float] = []
    preds: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    try:
        for batch in loader:
            x = batch["image"].to(device)
            with autocast(device, precision):
                if task == "classify":
                    cm.update(model(x).float().argmax(1).cpu(), batch["label"])
                elif task == "segment":
                    cm.update(model.predict(x).float().argmax(1).cpu(), batch["mask"])
                elif task == "change":
                    out = model.predict(x, batch["image_b"].to(device))
                    cm.update(out.float().argmax(1).cpu(), batch["mask"])
                elif task == "region":
                    if sum(len(b) for b in batch["boxes"]):
                        boxes = [b.to(device) for b in batch["boxes"]]
                        cm.update(model(x, boxes).float().argmax(1).cpu(), torch.cat(batch["labels"]))
                else:
                    for j, det in enumerate(model.predict(x)):
                        preds.append({"boxes": det["boxes"].float().cpu().numpy(),
                                      "scores": det["scores"].float().cpu().numpy(),
                                      "labels": (det["labels"] - 1).cpu().numpy()})
                        targets.append({"boxes": batch["boxes"][j].numpy(),
                                        "labels": batch["labels"][j].numpy()})
                        if task == "instance":
                            mask_ious.extend(matched_mask_iou(det, batch["boxes"][j], batch["labels"][j],
                                                              batch["masks"][j]))
    finally:
        model.train(was_training)
    if task in ("detect", "instance"):
        ap = average_precision(preds, targets, len(classes), 0.5)
        result = {"map50": ap["map"], "recall50": ap["recall"],
                  "per_class_ap50": {classes[c]: v for c, v in ap["per_class"].items()}, "images": len(preds)}
        if task == "instance":
            result["mask_iou"] = float(np.mean(mask_ious)) if mask_ious else 0.0
        return result
    s = cm.scores(classes)
    if task == "change":
        changed = s["per_class"][classes[1]] if len(classes) == 2 else None
        if changed is not None:
            return {"f1": changed["f1"], "iou": changed["iou"], "precision": changed["precision"],
                    "recall": changed["recall"], "accuracy": s["accuracy"], "miou": s["miou"]}
    if task in ("classify", "region"):
        return {"accuracy": s["accuracy"], "f1": s["f1"], "per_class": s["per_class"]}
    return {"miou": s["miou"], "accuracy": s["accuracy"], "f1": s["f1"],
            "per_class_iou": {k: v["iou"] for k, v in s["per_class"].items()}}


def evaluate_checkpoint(model: str, data: str, task: str, *, device: str = "cpu", format: str = "auto",
                        palette: Any = None, tile_size: int | None = None, batch_size: int = 4,
                        check_masks: bool = True, image_root: str | None = None) -> dict[str, Any]:
    """Load a task checkpoint as inference does and evaluate it on a dataset."""
    from dynamicvis_cli.checkpoints.task import load_task_model
    from dynamicvis_cli.data.discover import open_dataset
    from dynamicvis_cli.infer.runner import resolve_device

    dev = resolve_device(device)
    loaded = load_task_model(model, task, tile_size=tile_size, device=dev)
    cfg = loaded.config
    spec = open_dataset(data, task, format=format, classes=cfg.classes, palette=palette,
                        check_masks=check_masks, image_root=image_root)
    bands = cfg.default_bands()  # those it was trained on
    spec.check_bands(bands)
    ds = TaskDataset(spec, tile_size=cfg.tile_size, bands=bands, mean=cfg.mean, std=cfg.std, augment=None)
    return evaluate(loaded.module, ds, cfg.classes, device=dev, batch_size=batch_size)
