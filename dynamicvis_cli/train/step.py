"""One training forward pass per task: the task model plus its loss (and training-only heads).

:class:`TrainModule` is what DDP wraps: ``forward(batch)`` returns a dict with ``loss`` and the
parts to log. Losses (DESIGN.md §2.2): classify, cross-entropy; segment, cross-entropy of
UperNet plus ``aux_weight`` x that of an auxiliary FCN head on stage 3 (training only, not part
of the exported model); change, CE + ``dice_weight`` x Dice; detect and instance, the sum of
torchvision's FCOS / Mask R-CNN loss terms (labels shifted by one: 0 is background); region,
cross-entropy over every labelled box of the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dynamicvis_cli.nn.heads.segment import AuxFCNHead
from dynamicvis_cli.train.hooks import StageCapture
from dynamicvis_cli.train.losses import ce_dice, cross_entropy, upsample_to


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list):
            out[k] = [x.to(device, non_blocking=True) if isinstance(x, Tensor) else x for x in v]
        else:
            out[k] = v
    return out


def detection_targets(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
    """Per image ``boxes``, ``labels`` (+1: torchvision's 0 is background) and ``masks``."""
    targets = []
    for i, boxes in enumerate(batch["boxes"]):
        t = {"boxes": boxes, "labels": batch["labels"][i] + 1}
        if "masks" in batch:
            t["masks"] = batch["masks"][i]
        targets.append(t)
    return targets


def region_loss(logits: Tensor, labels: list[Tensor]) -> Tensor:
    """Cross-entropy over all boxes of the batch (0, still in the graph, when there are none)."""
    target = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if target.numel() == 0:
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits.float(), target.to(logits.device))


class TrainModule(nn.Module):
    """The task model and what only training needs, with the loss in ``forward``."""

    def __init__(self, task: str, model: nn.Module, num_classes: int, *, aux_weight: float = 0.4,
                 dice_weight: float = 3.0, head_channels: int = 256) -> None:
        super().__init__()
        self.task = task
        self.model = model
        self.dice_weight = dice_weight
        self.aux_weight = aux_weight if task == "segment" else 0.0
        self.aux: nn.Module | None = None
        self.capture: StageCapture | None = None
        if self.aux_weight > 0:
            trunk: Any = model.trunk
            self.aux = AuxFCNHead(int(trunk.spec.dims[2]), num_classes, channels=head_channels)
            self.capture = StageCapture(trunk.backbone)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        task, model = self.task, self.model
        if task == "classify":
            loss = nn.functional.cross_entropy(model(batch["image"]).float(), batch["label"])
            return {"loss": loss}
        if task == "segment":
            logits = upsample_to(model(batch["image"]), batch["mask"])
            main = cross_entropy(logits, batch["mask"])
            out = {"loss": main, "ce": main.detach()}
            if self.aux is not None and self.capture is not None and self.capture.stages is not None:
                aux_logits = self.aux(self.capture.stages[2])
                aux = cross_entropy(upsample_to(aux_logits, batch["mask"]), batch["mask"])
                out["loss"] = main + self.aux_weight * aux
                out["aux"] = aux.detach()
            return out
        if task == "change":
            logits = upsample_to(model(batch["image"], batch["image_b"]), batch["mask"])
            loss, parts = ce_dice(logits, batch["mask"], self.dice_weight)
            return {"loss": loss, **parts}
        if task == "region":
            return {"loss": region_loss(model(batch["image"], batch["boxes"]), batch["labels"])}
        losses: dict[str, Tensor] = model(list(batch["image"]), detection_targets(batch))
        total = sum(losses.values(), torch.zeros((), device=batch["image"].device))
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}
