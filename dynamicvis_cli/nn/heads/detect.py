"""Tiny-object detection: torchvision's FCOS on the 5-level DynamicVis FPN.

FCOS's regression ranges follow its anchor sizes (object size in [4·s, 8·s] for anchor size s,
the first level from 0 and the last to ∞). With the FPN's strides 4…64 the anchor sizes are the
strides, so objects up to 32 px go to the stride-4 level: ranges suited to small objects.
Images arrive normalised by dvis, so FCOS's own transform only pads (mean 0, std 1, no resize:
min_size = max_size = the tile size).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator

from dynamicvis_cli.nn.model import DynamicVis


class FPNFeatures(nn.Module):
    """Adapter: DynamicVis → the OrderedDict of FPN maps torchvision detectors expect."""

    def __init__(self, model: DynamicVis) -> None:
        super().__init__()
        if model.fpn is None:
            raise ValueError("detection needs a model with an FPN")
        self.body = model
        self.out_channels = model.fpn.out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict((str(i), f) for i, f in enumerate(self.body(x).fpn))


def build_fcos(model: DynamicVis, num_classes: int, *, tile_size: int, in_chans: int,
               score_thresh: float = 0.05, nms_thresh: float = 0.6,
               detections_per_img: int = 300) -> FCOS:
    """FCOS with ``num_classes`` foreground classes on ``model``'s FPN."""
    strides = [r for r in model.spec.reductions] + [model.spec.reductions[-1] * 2]
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    return FCOS(
        FPNFeatures(model), num_classes, min_size=tile_size, max_size=tile_size,
        image_mean=[0.0] * in_chans, image_std=[1.0] * in_chans, anchor_generator=anchors,
        score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
    )
