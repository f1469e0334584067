"""Run a task checkpoint over a labelled dataset and score it with the paper's metrics.

* classify: accuracy, macro precision / recall / F1, per class;
* segment: mIoU, accuracy, macro precision / recall / F1, per class; with two classes also the
  precision / recall / F1 / IoU of the target class (the second class, or ``target_class``);
* change: precision / recall / F1 / IoU of the change class (the second class), accuracy, mIoU;
* detect: COCO box AP, AP50, AP75, AP_small/medium/large, AR@100 (:mod:`.coco`);
* instance: the same for boxes (``box``) and masks (``mask``);
* region: the given boxes classified: accuracy, macro precision / recall / F1, per class (the
  paper's Table 11).

Items are what training validates on (:class:`~dynamicvis_cli.data.dataset.TaskDataset`, no
augmentation): classification images at their own size, the other tasks on a grid of the model's
tiles, with targets in tile pixels (so COCO area ranges refer to pixels as the model saw them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dynamicvis_cli.data.dataset import TaskDataset, collate
from dynamicvis_cli.errors import DatasetError, DvisUsageError
from dynamicvis_cli.evaluate.coco import coco_ap
from dynamicvis_cli.train.metrics import ConfusionMatrix

TASKS = ("classify", "segment", "change", "detect", "instance", "region")


def dense_scores(cm: ConfusionMatrix, classes: Sequence[str], task: str,
                 target_class: str | None = None) -> dict[str, Any]:
    """Metrics of a confusion matrix for ``task`` (classify, segment or change)."""
    s = cm.scores(classes)
    out: dict[str, Any] = {"accuracy": s["accuracy"], "precision": s["precision"], "recall": s["recall"],
                           "f1": s["f1"]}
    if task != "classify":
        out["miou"] = s["miou"]
    if task in ("segment", "change"):
        target = target_class or (classes[1] if len(classes) == 2 else None)
        if target is not None:
            t = s["per_class"][target]
            out["target_class"] = target
            out.update({f"target_{k}": t[k] for k in ("precision", "recall", "f1", "iou")})
            if task == "change":  # the paper's change metrics are those of the change class
                out.update({k: t[k] for k in ("precision", "recall", "f1", "iou")})
    out["per_class"] = s["per_class"]
    out["count"] = s["count"]
    return out


def _detections(det: Mapping[str, torch.Tensor], masks: bool) -> dict[str, Any]:
    out = {"boxes": det["boxes"].float().cpu().numpy(), "scores": det["scores"].float().cpu().numpy(),
           "labels": (det["labels"] - 1).cpu().numpy()}  # torchvision's class 0 is background
    if masks:
        out["masks"] = (det["masks"][:, 0].float().cpu().numpy() >= 0.5) if "masks" in det else \
            np.zeros((0, 1, 1), dtype=bool)
    return out


def _classify_batches(model: Any, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    images = batch["image"]
    if isinstance(images, torch.Tensor):
        out: torch.Tensor = model(images.to(device)).float().argmax(1).cpu()
        return out
    # images of different sizes: one at a time, each at its own size (as dvis classify runs them)
    return torch.cat([model(x[None].to(device)).float().argmax(1).cpu() for x in images])


def _region_batches(model: Any, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Predicted class of every box of the batch, in image then box order."""
    boxes = [b.to(device) for b in batch["boxes"]]
    if not sum(len(b) for b in boxes):
        return torch.zeros(0, dtype=torch.int64)
    images = batch["image"]
    if isinstance(images, torch.Tensor):
        out: torch.Tensor = model(images.to(device), boxes).float().argmax(1).cpu()
        return out
    return torch.cat([model(x[None].to(device), [b]).float().argmax(1).cpu() for x, b in zip(images, boxes)])


@torch.no_grad()
def evaluate_model(model: Any, dataset: TaskDataset, classes: Sequence[str], *, device: torch.device,
                   batch_size: int = 8, precision: str = "fp32", workers: int = 0,
                   target_class: str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Metrics of a task model (:mod:`dynamicvis_cli.nn.tasks`) on every item of ``dataset``;
    ``progress(done, total)`` after each batch."""
    from dynamicvis_cli.infer.runner import autocast

    task = dataset.task
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate)
    cm = ConfusionMatrix(len(classes))
    preds: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    done = 0
    for batch in loader:
        n = len(batch["image"])
        with autocast(device, precision):
            if task == "classify":
                cm.update(_classify_batches(model, batch, device), batch["label"])
            elif task == "segment":
                cm.update(model.predict(batch["image"].to(device)).float().argmax(1).cpu(), batch["mask"])
            elif task == "change":
                out = model.predict(batch["image"].to(device), batch["image_b"].to(device))
                cm.update(out.float().argmax(1).cpu(), batch["mask"])
            elif task == "region":
                cm.update(_region_batches(model, batch, device), torch.cat(batch["labels"]))
            else:
                x = batch["image"].to(device) if isinstance(batch["image"], torch.Tensor) else batch["image"]
                for j, det in enumerate(model.predict(x)):
                    preds.append(_detections(det, task == "instance"))
                    tgt = {"boxes": batch["boxes"][j].numpy(), "labels": batch["labels"][j].numpy()}
                    if task == "instance":
                        tgt["masks"] = batch["masks"][j].numpy().astype(bool)
                    targets.append(tgt)
        done += n
        if progress is not None:
            progress(done, len(dataset))
    if task in ("classify", "segment", "change", "region"):
        return dense_scores(cm, classes, "classify" if task == "region" else task, target_class)
    names = list(classes)

    def named(r: dict[str, Any]) -> dict[str, Any]:
        per_class = ("per_class_ap", "per_class_ap50")
        return {**r, **{key: {names[c]: v for c, v in r[key].items()} for key in per_class}}

    box = named(coco_ap(preds, targets, len(classes), kind="bbox"))
    if task == "detect":
        return {**box, "tiles": len(preds)}
    mask = named(coco_ap(preds, targets, len(classes), kind="segm"))
    return {"box": box, "mask": mask, "ap": mask["ap"], "ap50": mask["ap50"], "ap75": mask["ap75"],
            "ap_small": mask["ap_small"], "box_ap": box["ap"], "tiles": len(preds)}


def evaluate_task(model: str, data: str, task: str, *, format: str = "auto", palette: Any = None,
                  image_root: str | None = None, split: str | None = None, device: str = "auto",
                  precision: str = "fp32", batch_size: int = 8, tile_size: int | None = None,
                  workers: int = 0, target_class: str | None = None, random_weights: bool = False,
                  check_masks: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Load ``model`` for ``task`` (as the inference commands do) and score it on ``data``.

    The dataset is opened and checked (every file, up front) before the weights are read, so bad
    data fails fast with :class:`~dynamicvis_cli.errors.DatasetError` (exit 2).

    Returns:
        The task's metrics (see the module docstring) with the model, its weights, the data and
        the number of items.
    """
    from pathlib import Path

    from dynamicvis_cli.checkpoints.registry import resolve
    from dynamicvis_cli.checkpoints.task import load_task_model
    from dynamicvis_cli.data.discover import open_dataset
    from dynamicvis_cli.infer.runner import resolve_device

    if task not in TASKS:
        raise DvisUsageError(f"--task {task}: choose one of {', '.join(TASKS)}, retrieval")
    root = Path(data)
    if not root.exists():
        raise DatasetError(root, "dataset does not exist")
    if split is not None:
        root = root / split
        if not root.is_dir():
            raise DvisUsageError(f"{data}: no split folder '{split}'")
    config, _ = resolve(model)
    classes = list(config.classes) if config.task == task else None
    if config.task != task and not random_weights:
        raise DvisUsageError(f"{model}: a '{config.task}' model, not a fine-tuned {task} model; evaluate "
                             f"a checkpoint from dvis finetune --task {task} (or pass --random-weights)")
    spec = open_dataset(root, task, format=format, classes=classes, palette=palette,
                        image_root=image_root, check_masks=check_masks)
    if target_class is not None and target_class not in spec.classes:
        raise DvisUsageError(f"--target-class {target_class}: not one of {', '.join(spec.classes)}")
    dev = resolve_device(device)
    loaded = load_task_model(model, task, classes=None if config.task == task else spec.classes,
                             tile_size=tile_size, device=dev, random_weights=random_weights)
    cfg = loaded.config
    if list(spec.classes) != list(cfg.classes):
        raise DvisUsageError(f"{data}: classes {spec.classes} differ from the model's {cfg.classes}")
    bands = cfg.default_bands()
    spec.check_bands(bands)
    ds = TaskDataset(spec, tile_size=cfg.tile_size, bands=bands, mean=cfg.mean, std=cfg.std, augment=None)
    t0 = time.perf_counter()
    metrics = evaluate_model(loaded.module, ds, cfg.classes, device=dev, batch_size=batch_size,
                             precision=precision, workers=workers, target_class=target_class,
                             progress=progress)
    return {"model": str(model), "weights": loaded.weights, "random_weights": loaded.random,
            "data": str(root), "format": spec.format,
            "classes": list(cfg.classes), "images": len(spec.records), "items": len(ds),
            "tile_size": cfg.tile_size, "device": str(dev), "seconds": round(time.perf_counter() - t0, 2),
            "metrics": metrics}
