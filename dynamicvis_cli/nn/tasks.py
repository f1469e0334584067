"""Task models: the DynamicVis trunk (backbone + FPN) with one head each.

Every task model exposes ``trunk`` (the :class:`DynamicVis` it stands on, so backbone weights can be
loaded into it) and ``predict(...)``, the inference contract the tiled engine relies on:

=========  ===========================================  =========================================
task       predict input                                 predict output
=========  ===========================================  =========================================
classify   (B, C, H, W)                                  (B, K) logits
segment    (B, C, H, W)                                  (B, K, H, W) logits at input resolution
detect     (B, C, H, W)                                  list of {boxes xyxy px, scores, labels}
instance   (B, C, H, W)                                  list of {boxes xyxy px, scores, labels,
                                                         masks (N, 1, H, W) probabilities}
change     (B, C, H, W), (B, C, H, W)                    (B, K, H, W) logits at input resolution
region     (B, C, H, W), B tensors (N_i, 4) xyxy px      (sum N_i, K) logits, one row per box
=========  ===========================================  =========================================
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamicvis_cli.nn.heads.change import ChangeHead
from dynamicvis_cli.nn.heads.classify import ClassifierHead
from dynamicvis_cli.nn.heads.detect import build_fcos
from dynamicvis_cli.nn.heads.instance import build_mask_rcnn
from dynamicvis_cli.nn.heads.region import RegionHead
from dynamicvis_cli.nn.heads.segment import UperNetHead
from dynamicvis_cli.nn.model import DynamicVis

TASKS = ("classify", "segment", "detect", "instance", "change", "region")


def _to_input_size(logits: Tensor, height: int, width: int) -> Tensor:
    """Stride-4 logits → input resolution (bilinear ×4, then cropped to the exact size)."""
    up = F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)
    return up[..., :height, :width]


class Classifier(nn.Module):
    def __init__(self, trunk: DynamicVis, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = ClassifierHead(trunk.spec.dims[-1], num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C_last) pooled, normalised last-stage features."""
        return self.head.pooled(self.trunk.backbone(x)[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk.backbone(x)[-1])

    predict = forward


class Segmenter(nn.Module):
    def __init__(self, trunk: DynamicVis, num_classes: int, *, channels: int = 256) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = UperNetHead(list(trunk.spec.dims), num_classes, channels=channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, K, H/4, W/4) logits (training works at this resolution)."""
        return self.head(self.trunk.backbone(x))

    def predict(self, x: Tensor) -> Tensor:
        return _to_input_size(self(x), x.shape[-2], x.shape[-1])


class ChangeDetector(nn.Module):
    def __init__(self, trunk: DynamicVis, num_classes: int = 2, *, channels: int = 128) -> None:
        super().__init__()
        if trunk.fpn is None:
            raise ValueError("change detection needs a model with an FPN")
        self.trunk = trunk
        self.head = ChangeHead(trunk.fpn.out_channels, num_classes, channels=channels)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        both = self.trunk(torch.cat([a, b], dim=0)).fpn  # one pass, shared weights
        n = a.shape[0]
        return self.head([f[:n] for f in both], [f[n:] for f in both])

    def predict(self, a: Tensor, b: Tensor) -> Tensor:
        return _to_input_size(self(a, b), a.shape[-2], a.shape[-1])


class Detector(nn.Module):
    """torchvision FCOS on the trunk's FPN; ``predict`` returns one dict per image."""

    def __init__(self, trunk: DynamicVis, num_classes: int, *, tile_size: int, in_chans: int) -> None:
        super().__init__()
        self.fcos = build_fcos(trunk, num_classes, tile_size=tile_size, in_chans=in_chans)

    @property
    def trunk(self) -> DynamicVis:
        body: DynamicVis = self.fcos.backbone.body
        return body

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        return self.fcos(images, targets)

    def predict(self, x: Tensor) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = self.fcos(list(x))
        return out


class InstanceSegmenter(nn.Module):
    """torchvision Mask R-CNN on the trunk's FPN; ``predict`` returns one dict per image.

    Labels count background as 0 (the first class is label 1), as for :class:`Detector`.
    """

    def __init__(self, trunk: DynamicVis, num_classes: int, *, tile_size: int, in_chans: int,
                 **head: Any) -> None:
        super().__init__()
        self.maskrcnn = build_mask_rcnn(trunk, num_classes, tile_size=tile_size, in_chans=in_chans,
                                        **head)

    @property
    def trunk(self) -> DynamicVis:
        body: DynamicVis = self.maskrcnn.backbone.body
        return body

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Training (with targets: boxes, labels, masks (N, H, W) uint8): Mask R-CNN's loss dict."""
        return self.maskrcnn(images, targets)

    def predict(self, x: Tensor) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = self.maskrcnn(list(x))
        return out


class RegionClassifier(nn.Module):
    """Given boxes classified from their features on every FPN level (fMoW-style region
    classification; also the model meta-embedding pretraining trains)."""

    def __init__(self, trunk: DynamicVis, num_classes: int) -> None:
        super().__init__()
        if trunk.fpn is None:
            raise ValueError("region classification needs a model with an FPN")
        self.trunk = trunk
        self.head = RegionHead(trunk.fpn.out_channels, num_classes)

    def embed(self, x: Tensor, boxes: list[Tensor], *, progress: float | None = None) -> Tensor:
        """(sum N_i, C) normalised region vectors of ``boxes`` (xyxy input pixels per image)."""
        return self.head.pooled(self.trunk(x, progress=progress).fpn, boxes)

    def forward(self, x: Tensor, boxes: list[Tensor]) -> Tensor:
        return self.head(self.trunk(x).fpn, boxes)

    predict = forward


def build_task_model(task: str, trunk: DynamicVis, num_classes: int, *, tile_size: int,
                     head: dict[str, Any] | None = None) -> nn.Module:
    """The task model for ``task`` on ``trunk`` with a freshly initialised head."""
    head = head or {}
    if task == "classify":
        return Classifier(trunk, num_classes)
    if task == "segment":
        return Segmenter(trunk, num_classes, **head)
    if task == "change":
        return ChangeDetector(trunk, num_classes, **head)
    if task == "detect":
        return Detector(trunk, num_classes, tile_size=tile_size, in_chans=trunk.spec.in_chans)
    if task == "instance":
        return InstanceSegmenter(trunk, num_classes, tile_size=tile_size, in_chans=trunk.spec.in_chans,
                                 **head)
    if task == "region":
        return RegionClassifier(trunk, num_classes)
    raise ValueError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
