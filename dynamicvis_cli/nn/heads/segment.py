"""Semantic segmentation: UperNet (pyramid pooling on the last stage + FPN fusion of all four).

As mmsegmentation's UPerHead: PPM with pool scales (1, 2, 3, 6) on stage 4, 1×1 laterals on stages
1–3, top-down bilinear addition, 3×3 convs, all levels upsampled to stride 4, concatenated, fused
by a 3×3 conv and classified by a 1×1 conv. Conv-BN-ReLU blocks come from torchvision. Fully
convolutional except the PPM's global pooling, whose context depends on the tile (this is why tiled
and whole-image results of UperNet differ slightly; the tiler's equality test uses a conv model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation


def _cbr(cin: int, cout: int, k: int) -> Conv2dNormActivation:
    return Conv2dNormActivation(cin, cout, k, padding=k // 2, norm_layer=nn.BatchNorm2d,
                                activation_layer=nn.ReLU, bias=False)


class UperNetHead(nn.Module):
    """Four stage maps → (batch, num_classes, H/4, W/4) logits."""

    def __init__(self, in_dims: list[int], num_classes: int, *, channels: int = 256,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        self.pool_scales = pool_scales
        self.ppm = nn.ModuleList(_cbr(in_dims[-1], channels, 1) for _ in pool_scales)
        self.bottleneck = _cbr(in_dims[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_cbr(c, channels, 1) for c in in_dims[:-1])
        self.fpn_convs = nn.ModuleList(_cbr(channels, channels, 3) for _ in in_dims[:-1])
        self.fpn_bottleneck = _cbr(len(in_dims) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def _psp(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(conv(F.adaptive_avg_pool2d(x, s)), size=size, mode="bilinear", align_corners=False)
            for s, conv in zip(self.pool_scales, self.ppm)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: list[Tensor]) -> Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1])]
        laterals.append(self._psp(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class AuxFCNHead(nn.Module):
    """Auxiliary FCN head on stage 3 used only in training (mmseg's auxiliary_head)."""

    def __init__(self, in_dim: int, num_classes: int, *, channels: int = 256) -> None:
        super().__init__()
        self.conv = _cbr(in_dim, channels, 3)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.conv(x))
