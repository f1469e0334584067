"""Losses: cross-entropy with an ignore index, and soft Dice (the change loss is CE + 3 x Dice)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dynamicvis_cli.data.records import IGNORE_INDEX


def upsample_to(logits: Tensor, target: Tensor) -> Tensor:
    """Stride-4 logits (B, K, h, w) → the label's size (B, K, H, W), bilinear."""
    if logits.shape[-2:] == target.shape[-2:]:
        return logits
    return F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)


def dice_loss(logits: Tensor, target: Tensor, *, ignore_index: int = IGNORE_INDEX,
              eps: float = 1.0) -> Tensor:
    """1 - mean over classes of the soft Dice between softmax probabilities and one-hot labels.

    Args:
        logits: (B, K, H, W).
        target: (B, H, W) int64 class indexes; ``ignore_index`` pixels count for nothing.
    """
    k = logits.shape[1]
    valid = (target != ignore_index)
    probs = logits.float().softmax(dim=1) * valid[:, None]
    onehot = F.one_hot(target.clamp(0, k - 1) * valid, k).permute(0, 3, 1, 2).float() * valid[:, None]
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel cross-entropy averaged over labelled pixels (0 when none is labelled)."""
    if bool((target != IGNORE_INDEX).any()):
        return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
    return logits.sum() * 0.0


def ce_dice(logits: Tensor, target: Tensor, dice_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """CE + ``dice_weight`` x Dice, with both parts for the log."""
    ce = cross_entropy(logits, target)
    dice = dice_loss(logits, target)
    return ce + dice_weight * dice, {"ce": ce.detach(), "dice": dice.detach()}

