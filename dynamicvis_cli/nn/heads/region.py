"""Region features: each box pooled from every FPN level into one vector (DESIGN.md §2.2, §2.3).

The authors' region classification and meta-embedding pretraining both start from the same
vector: the box is RoI-aligned (torchvision's :func:`~torchvision.ops.roi_align`) on each of
the FPN levels of strides 4, 8, 16 and 32, each pooled map is averaged over its cells, and the
levels are averaged. Unlike the FPN paper's one-level-per-box rule, every box sees every level, so
a 10-px ship and a 300-px airport give vectors of the same kind (the fifth FPN level, a stride-2
max-pool of the fourth, adds nothing a box could use and is left out, as in the detectors).

:func:`region_features_reference` is the same computation written box by box and level by
level with plain bilinear sampling, kept to check the batched path against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

#: Strides of the FPN levels boxes are pooled from.
REGION_STRIDES = (4, 8, 16, 32)


class RegionPooler(nn.Module):
    """FPN maps + per-image boxes → (N, C) region vectors (the mean over levels of the mean over
    a ``output_size``² RoI-Align grid).

    Args:
        strides: strides of the first ``len(strides)`` FPN levels to pool from.
        output_size: RoI-Align grid side per level.
        sampling_ratio: bilinear samples per grid cell side (as in torchvision's detectors).
    """

    def __init__(self, strides: Sequence[int] = REGION_STRIDES, output_size: int = 7,
                 sampling_ratio: int = 2) -> None:
        super().__init__()
        self.strides = tuple(int(s) for s in strides)
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)

    def forward(self, fpn: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """``fpn``: level maps (B, C, H/s, W/s); ``boxes``: B tensors (N_i, 4) xyxy in input pixels.

        Returns:
            (sum N_i, C) float32 region vectors, in image then box order.
        """
        rois = [b.to(fpn[0].dtype) for b in boxes]
        out: Tensor | None = None
        for level, stride in zip(fpn, self.strides):
            pooled = roi_align(level, rois, self.output_size, spatial_scale=1.0 / stride,
                               sampling_ratio=self.sampling_ratio, aligned=True)
            part = pooled.float().mean(dim=(-2, -1))
            out = part if out is None else out + part
        assert out is not None
        return out / len(self.strides)


class RegionHead(nn.Module):
    """Region vectors → LayerNorm → linear (region classification; the pretrained classifier)."""

    def __init__(self, channels: int, num_classes: int, **pooler: int) -> None:
        super().__init__()
        self.pool = RegionPooler(**pooler)  # type: ignore[arg-type]
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.fc = nn.Linear(channels, num_classes)

    def pooled(self, fpn: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """(N, C) normalised region vectors (what pretraining embeds and retrieval can use)."""
        return self.norm(self.pool(fpn, boxes))

    def forward(self, fpn: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        return self.fc(self.pooled(fpn, boxes))


def _bilinear(fmap: Tensor, y: float, x: float) -> Tensor:
    """(C,) value of ``fmap`` (C, H, W) at continuous pixel-centre coordinates; 0 outside."""
    _, h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return fmap.new_zeros(fmap.shape[0])
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    dy, dx = y - y0, x - x0
    return ((1 - dy) * (1 - dx) * fmap[:, y0, x0] + (1 - dy) * dx * fmap[:, y0, x1]
            + dy * (1 - dx) * fmap[:, y1, x0] + dy * dx * fmap[:, y1, x1])


def region_features_reference(fpn: Sequence[Tensor], boxes: Sequence[Tensor],
                              strides: Sequence[int] = REGION_STRIDES, output_size: int = 7,
                              sampling_ratio: int = 2) -> Tensor:
    """Pure reference of :class:`RegionPooler` (slow: loops over boxes, levels and samples).

    RoI-Align with ``aligned=True``: box corners scaled by 1/stride and shifted by half a cell,
    each of the ``output_size``² bins averaged over ``sampling_ratio``² bilinear samples.
    """
    rows = []
    for b, image_boxes in enumerate(boxes):
        for box in image_boxes.tolist():
            acc = None
            for level, stride in zip(fpn, strides):
                fmap = level[b].float()
                x0, y0, x1, y1 = (v / stride - 0.5 for v in box)
                bw, bh = (x1 - x0) / output_size, (y1 - y0) / output_size
                total = fmap.new_zeros(fmap.shape[0])
                for i in range(output_size):
                    for j in range(output_size):
                        for si in range(sampling_ratio):
                            for sj in range(sampling_ratio):
                                y = y0 + (i + (si + 0.5) / sampling_ratio) * bh
                                x = x0 + (j + (sj + 0.5) / sampling_ratio) * bw
                                total = total + _bilinear(fmap, y, x)
                v = total / (output_size * output_size * sampling_ratio * sampling_ratio)
                acc = v if acc is None else acc + v
            assert acc is not None
            rows.append(acc / len(strides))
    if not rows:
        return torch.zeros(0, fpn[0].shape[1])
    return torch.stack(rows)


__all__ = ["REGION_STRIDES", "RegionHead", "RegionPooler", "region_features_reference"]
