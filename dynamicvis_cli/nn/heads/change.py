"""Change detection: one shared backbone+FPN for both dates, per-level fusion, decoder, MLP head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation


class ChangeHead(nn.Module):
    """FPN maps of two dates → (batch, num_classes, H/4, W/4) change logits.

    Each of the first four FPN levels fuses [f_a, f_b, |f_a − f_b|] with a 3×3 Conv-BN-ReLU; the
    fused levels are upsampled to stride 4, concatenated and classified by a two-layer 1×1 MLP.
    """

    def __init__(self, fpn_channels: int, num_classes: int = 2, *, channels: int = 128, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels
        self.fuse = nn.ModuleList(
            Conv2dNormActivation(3 * fpn_channels, channels, 3, norm_layer=nn.BatchNorm2d, bias=False)
            for _ in range(levels)
        )
        self.mlp = nn.Sequential(
            Conv2dNormActivation(levels * channels, channels, 1, norm_layer=nn.BatchNorm2d, bias=False),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, feats_a: list[Tensor], feats_b: list[Tensor]) -> Tensor:
        fused = [
            conv(torch.cat([a, b, (a - b).abs()], dim=1))
            for conv, a, b in zip(self.fuse, feats_a[: self.levels], feats_b[: self.levels])
        ]
        size = fused[0].shape[-2:]
        ups = [fused[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in fused[1:]]
        return self.mlp(torch.cat(ups, dim=1))
