"""FPN on the backbone's four maps: torchvision's FeaturePyramidNetwork + LastLevelMaxPool.

This is mmdetection's default FPN as the authors use it (1×1 laterals, nearest top-down
upsampling to each finer map's exact size, 3×3 outputs, no norms or activations) with a 5th
level that is a stride-2 max-pool of kernel 1 of the 4th (no convolution). The authors'
``lateral_convs.{i}.conv`` / ``fpn_convs.{i}.conv`` keys map to ``inner_blocks.{i}.0`` /
``layer_blocks.{i}.0`` (see checkpoints/import_authors.py).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool


class FPN(FeaturePyramidNetwork):
    """(four maps) → five maps of ``out_channels`` at strides 4, 8, 16, 32, 64."""

    def __init__(self, in_channels: list[int], out_channels: int = 256) -> None:
        super().__init__(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, feats: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        out = super().forward(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return list(out.values())
