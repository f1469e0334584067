"""Test-time augmentation: the flips and rotations of a square tile (the dihedral group D4).

A transform is ``k`` quarter turns (``torch.rot90`` over the last two axes, counter-clockwise
as displayed) followed, when ``flip`` is set, by a left-right flip. Each has an exact inverse
for dense outputs (:meth:`D4.invert`) and for boxes (:meth:`D4.invert_boxes`), so a model's
outputs on a transformed tile can be brought back onto the tile's own pixels:

- dense maps: each pass's class probabilities are inverted, then averaged over the passes (in
  a fixed order) *before* the stitcher blends tiles, so blending sees one map per tile;
- boxes: each pass's boxes are inverted and all passes are concatenated; the scene NMS then
  merges the copies of an object (it sees them as overlapping boxes of one class).

``--tta flips`` runs 3 passes (as is, left-right, top-bottom); ``--tta d4`` all 8 elements
of D4. Rotations need square inputs, which tiles are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dynamicvis_cli.errors import DvisUsageError

#: ``--tta`` choices.
TTA_MODES = ("none", "flips", "d4")


@dataclass(frozen=True)
class D4:
    """``k`` quarter turns (``torch.rot90(x, k, dims=(-2, -1))``), then a left-right flip if ``flip``."""

    k: int = 0
    flip: bool = False

    @property
    def identity(self) -> bool:
        return self.k % 4 == 0 and not self.flip

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Transform images ``(..., h, w)`` (``h == w`` unless ``k`` is even)."""
        _check_square(x, self.k)
        if self.k % 4:
            x = torch.rot90(x, self.k, dims=(-2, -1))
        return x.flip(-1) if self.flip else x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Bring a dense output ``(..., h, w)`` of a transformed input back onto the input's pixels."""
        if self.flip:
            y = y.flip(-1)
        return torch.rot90(y, -self.k, dims=(-2, -1)) if self.k % 4 else y

    def invert_boxes(self, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """Boxes found on a transformed ``size`` × ``size`` input → boxes on the input.

        Args:
            boxes: (N, 4) ``x1, y1, x2, y2`` in pixel-corner coordinates of the transformed input.
            size: side of the (square) input.

        Returns:
            (N, 4) ``x1, y1, x2, y2`` on the untransformed input (same dtype and device).
        """
        x = torch.stack([boxes[:, 0], boxes[:, 2]], dim=1)  # (N, 2): both corners
        y = torch.stack([boxes[:, 1], boxes[:, 3]], dim=1)
        if self.flip:
            x = size - x
        for _ in range(self.k % 4):
            # One quarter turn maps input (x, y) to output (y, size - x); undo it.
            x, y = size - y, x
        lo_x, hi_x = x.min(dim=1).values, x.max(dim=1).values
        lo_y, hi_y = y.min(dim=1).values, y.max(dim=1).values
        return torch.stack([lo_x, lo_y, hi_x, hi_y], dim=1)


def _check_square(x: torch.Tensor, k: int) -> None:
    if k % 2 and x.shape[-1] != x.shape[-2]:
        raise DvisUsageError(
            f"--tta with rotations needs square inputs, got {x.shape[-2]}x{x.shape[-1]}"
        )


def transforms(mode: str) -> list[D4]:
    """The passes of a ``--tta`` mode, identity first.

    Raises:
        DvisUsageError: an unknown mode.
    """
    if mode == "none":
        return [D4()]
    if mode == "flips":
        return [D4(), D4(0, True), D4(2, True)]  # as is, left-right, top-bottom
    if mode == "d4":
        return [D4(k, f) for f in (False, True) for k in range(4)]
    raise DvisUsageError(f"--tta {mode}: expected one of {', '.join(TTA_MODES)}")


def dense_probabilities(
    predict: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], passes: Sequence[D4]
) -> torch.Tensor:
    """Class probabilities averaged over the passes, on the inputs' own pixels.

    Args:
        predict: ``predict(*inputs) → (B, K, h, w)`` logits (inputs transformed alike).
        inputs: (B, C, h, w) tensors, e.g. the two dates of a change pair.
        passes: transforms to run (see :func:`transforms`).

    Returns:
        (B, K, h, w) float32 mean of the per-pass softmax probabilities.
    """
    total: torch.Tensor | None = None
    for t in passes:
        probs = t.invert(predict(*[t.apply(x) for x in inputs]).float().softmax(dim=1))
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(passes) if len(passes) > 1 else total


def detections(
    predict: Callable[[torch.Tensor], list[dict[str, torch.Tensor]]],
    images: torch.Tensor,
    passes: Sequence[D4],
) -> list[dict[str, torch.Tensor]]:
    """Per-image detections of all passes, each mapped back onto the image and concatenated.

    Args:
        predict: ``predict(images) →`` one dict per image with ``boxes`` (N, 4), ``scores``,
            ``labels`` and optionally ``masks`` (N, 1, h, w).
        images: (B, C, s, s) tiles.
        passes: transforms to run (see :func:`transforms`).

    Returns:
        One dict per image with the same keys, the passes' detections in pass order.
    """
    size = images.shape[-1]
    per_pass = []
    for t in passes:
        results = predict(t.apply(images))
        if not t.identity:
            results = [_invert_result(t, r, size) for r in results]
        per_pass.append(results)
    out = []
    for i in range(images.shape[0]):
        parts = [p[i] for p in per_pass]
        out.append({key: torch.cat([r[key] for r in parts]) for key in parts[0]})
    return out


def _invert_result(t: D4, r: dict[str, Any], size: int) -> dict[str, Any]:
    out = dict(r)
    out["boxes"] = t.invert_boxes(r["boxes"], size)
    if "masks" in r:
        out["masks"] = t.invert(r["masks"])
    return out

