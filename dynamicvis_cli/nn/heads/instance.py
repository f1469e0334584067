"""Instance segmentation: torchvision's Mask R-CNN on the 5-level DynamicVis FPN.

Choices (design notes §2.2: "Mask R-CNN; RoI features from all FPN levels (GRoIE ...), RPN
anchors scales 4/8"):

- **RPN anchors**: on every FPN level (strides 4, 8, 16, 32, 64) anchors of side 4·s and 8·s
  (the authors' anchor scales 4 and 8 times the level's stride) at aspect ratios 0.5, 1 and 2:
  6 anchors per location, the smallest 16 px on the stride-4 level, so small objects get
  anchors of their size; the stride-64 level is used by the RPN only.
- **RoI levels**: box and mask RoIs are pooled from the four levels ``'0'``…``'3'`` (strides
  4…32), as in the authors' mmdetection config (``featmap_strides=[4, 8, 16, 32]``) and in
  torchvision's FPN detectors: the fifth level is a stride-2 max-pool of the fourth, it adds no
  information a RoI could use.
- **RoI pooling** (``roi_pool``):

  * ``"fpn"`` (default): torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign` over the
    four levels: each RoI is read from the one level its size maps to (the FPN paper's rule,
    ``k = ⌊4 + log2(√(wh)/224)⌋``: RoIs under 112 px read the stride-4 level). Cheap, and
    what torchvision's Mask R-CNN does.
  * ``"groie"``: the authors' GRoIE aggregation: each RoI is pooled from *all* four levels,
    each pooled map passes one shared 5×5 convolution + ReLU, and the four are summed. GRoIE's
    attention module after the sum is not included. It costs four RoI-Aligns and four 5×5
    convolutions per RoI, so it is much slower on CPU.
- **Head widths**: the mask head has four 3×3 convolutions of ``channels`` (256 as in the
  authors' config and torchvision; the architecture configs give ``head_channels``, e.g. 32 for
  ``tiny``), the box head two fully connected layers of ``4 · channels`` (1024 at 256).

Images arrive normalised by dvis, so Mask R-CNN's own transform only pads (mean 0, std 1, no
resize: min_size = max_size = the tile size), exactly as for FCOS. Class 0 is background.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import Conv2dNormActivation

from dynamicvis_cli.nn.heads.detect import FPNFeatures
from dynamicvis_cli.nn.model import DynamicVis

#: FPN levels RoIs are pooled from (strides 4, 8, 16, 32); level '4' feeds the RPN only.
ROI_LEVELS = ("0", "1", "2", "3")
ROI_POOLS = ("fpn", "groie")


class LevelSumRoIAlign(MultiScaleRoIAlign):
    """GRoIE-style RoI pooling: every RoI from every level, a shared 5×5 conv + ReLU, summed.

    A :class:`~torchvision.ops.MultiScaleRoIAlign` (torchvision's RoI heads accept only those)
    whose ``forward`` reads all its levels instead of one level per RoI.
    """

    def __init__(self, featmap_names: Sequence[str], output_size: int, sampling_ratio: int,
                 channels: int) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        # One single-level pooler per level: each infers its own scale from its feature map.
        self.levels = nn.ModuleList(MultiScaleRoIAlign([n], output_size, sampling_ratio)
                                    for n in featmap_names)
        self.pre = Conv2dNormActivation(channels, channels, kernel_size=5, norm_layer=None)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        out: Tensor | None = None
        for pool in self.levels:
            part = self.pre(pool(x, boxes, image_shapes))
            out = part if out is None else out + part
        assert out is not None
        return out


def _roi_pooler(kind: str, output_size: int, channels: int) -> nn.Module:
    if kind == "fpn":
        return MultiScaleRoIAlign(list(ROI_LEVELS), output_size=output_size, sampling_ratio=2)
    if kind == "groie":
        return LevelSumRoIAlign(ROI_LEVELS, output_size, 2, channels)
    raise ValueError(f"unknown RoI pooling '{kind}'; choose one of {', '.join(ROI_POOLS)}")


def build_mask_rcnn(model: DynamicVis, num_classes: int, *, tile_size: int, in_chans: int,
                    channels: int = 256, roi_pool: str = "fpn",
                    anchor_scales: Sequence[float] = (4.0, 8.0),
                    score_thresh: float = 0.05, nms_thresh: float = 0.5,
                    detections_per_img: int = 100) -> MaskRCNN:
    """Mask R-CNN with ``num_classes`` classes (background included) on ``model``'s FPN.

    Args:
        model: the trunk; it must have an FPN.
        num_classes: foreground classes + 1.
        tile_size: the image side the detector is run at (no resize below or above it).
        in_chans: input bands (for the transform's per-band mean/std of 0/1).
        channels: mask head width; the box head is ``4 · channels`` wide.
        roi_pool: ``"fpn"`` or ``"groie"`` (see the module docstring).
        anchor_scales: anchor sides in multiples of each level's stride.
        score_thresh, nms_thresh, detections_per_img: the box head's post-processing.

    Raises:
        ValueError: an unknown ``roi_pool`` or a trunk without FPN.
    """
    features = FPNFeatures(model)
    width = features.out_channels
    strides = [r for r in model.spec.reductions] + [model.spec.reductions[-1] * 2]
    sizes = tuple(tuple(int(round(s * k)) for k in anchor_scales) for s in strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
    box_pool = _roi_pooler(roi_pool, 7, width)
    mask_pool = _roi_pooler(roi_pool, 14, width)
    representation = 4 * channels
    return MaskRCNN(
        features, None, min_size=tile_size, max_size=tile_size,
        image_mean=[0.0] * in_chans, image_std=[1.0] * in_chans,
        rpn_anchor_generator=anchors,
        box_roi_pool=box_pool, box_head=TwoMLPHead(width * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        box_score_thresh=score_thresh, box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
        mask_roi_pool=mask_pool, mask_head=MaskRCNNHeads(width, [channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
    )
