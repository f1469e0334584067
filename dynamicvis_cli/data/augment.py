"""Joint image + target transforms that keep labels correct.

Every sample is first cut from its image by a *window* (scale jitter and crop in one step: a
window of side ``tile / scale`` at a random position, resized to ``tile``), then flipped and
rotated by multiples of 90° (on the square tile), then colour-jittered. Boxes, label masks and
instance masks go through the same geometry as the pixels; colour never touches them.

Coordinate conventions: boxes are ``(x1, y1, x2, y2)`` in pixel-edge coordinates (0..S), a
pixel ``(row, col)`` covers ``[col, col+1) × [row, row+1)``. ``rot90`` with ``k = 1`` is
``numpy.rot90(a, 1, axes=(-2, -1))`` (counter-clockwise as displayed): pixel ``(r, c)`` moves
to ``(S-1-c, r)``, a point ``(x, y)`` to ``(y, S - x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass
class AugmentConfig:
    """Training augmentation. ``scale`` is the jitter range (2.0 = zoom in ×2: the window is half
    the tile); ``colour`` the amplitude of brightness/contrast/saturation factors (0 = off)."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (0.75, 1.33)
    colour: float = 0.1
    min_visible: float = 0.5
    object_crop: float = 0.5

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(hflip=False, vflip=False, rot90=False, scale=(1.0, 1.0), colour=0.0, object_crop=0.0)


@dataclass
class Example:
    """One sample in the tile frame (S × S) before normalisation.

    ``image``/``image_b``: float32 (C, S, S) on the 0..1 scale; ``valid``: bool (S, S);
    ``mask``: uint8 (S, S) class indexes (255 ignore); ``boxes``: float64 (N, 4);
    ``labels``: int64 (N,); ``masks``: uint8 (N, S, S) instance masks.
    """

    image: NDArray[np.float32]
    valid: NDArray[np.bool_]
    image_b: NDArray[np.float32] | None = None
    mask: NDArray[np.uint8] | None = None
    boxes: NDArray[np.float64] | None = None
    labels: NDArray[np.int64] | None = None
    masks: NDArray[np.uint8] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def sample_window(bounds: tuple[int, int, int, int], tile: int, scale: tuple[float, float],
                  rng: np.random.Generator,
                  around: tuple[float, float, float, float] | None = None) -> tuple[int, int, int, int]:
    """A random (col, row, side, side) window for a crop of ``tile`` px at a jittered scale.

    The scale is drawn log-uniformly from ``scale``; the window side is ``round(tile / s)``. When
    the window is smaller than the region it lies inside it; when larger, the region lies inside
    the window (the rest is padding, as at a scene edge in inference). With ``around`` (a box
    x1, y1, x2, y2) the window is placed, within those limits, so that it contains the box when
    it can (detection: crops of large images that would mostly miss small objects).
    """
    col, row, w, h = bounds
    lo, hi = scale
    s = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
    side = max(1, int(round(tile / s)))
    x_lo, x_hi = col + min(0, w - side), col + max(0, w - side)
    y_lo, y_hi = row + min(0, h - side), row + max(0, h - side)
    if around is not None:
        x1, y1, x2, y2 = around
        x_lo, x_hi = _narrow(x_lo, x_hi, math.ceil(x2) - side, math.floor(x1))
        y_lo, y_hi = _narrow(y_lo, y_hi, math.ceil(y2) - side, math.floor(y1))
    x = int(rng.integers(x_lo, x_hi + 1))
    y = int(rng.integers(y_lo, y_hi + 1))
    return x, y, side, side


def _narrow(lo: int, hi: int, want_lo: int, want_hi: int) -> tuple[int, int]:
    """[lo, hi] ∩ [want_lo, want_hi], or the allowed value nearest to the wanted range."""
    a, b = max(lo, want_lo), min(hi, want_hi)
    if a <= b:
        return a, b
    mid = min(max((want_lo + want_hi) // 2, lo), hi)
    return mid, mid


def grid_windows(bounds: tuple[int, int, int, int], tile: int) -> list[tuple[int, int, int, int]]:
    """Row-major ``tile`` × ``tile`` windows covering ``bounds``; the last ones reach past it."""
    col, row, w, h = bounds
    return [(col + c, row + r, tile, tile) for r in range(0, h, tile) for c in range(0, w, tile)]


def window_boxes(boxes: NDArray[np.float64], labels: NDArray[np.int64],
                 window: tuple[int, int, int, int], size: int,
                 min_visible: float) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.intp]]:
    """Boxes in the frame of ``window`` resized to ``size``; those mostly outside are dropped.

    Returns:
        boxes (M, 4) clipped to [0, size], their labels, and the indexes of the kept input boxes.
        A box is kept when at least ``min_visible`` of its area is inside and it is at least one
        pixel wide and high after clipping.
    """
    col, row, side, _ = window
    f = size / side
    b = (boxes - np.array([col, row, col, row], dtype=np.float64)) * f
    clipped = np.clip(b, 0, size)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
    keep = np.flatnonzero((inside >= min_visible * np.maximum(area, 1e-9))
                          & (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1))
    return clipped[keep], labels[keep], keep


def hflip_boxes(boxes: NDArray[np.float64], size: int) -> NDArray[np.float64]:
    return np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)


def vflip_boxes(boxes: NDArray[np.float64], size: int) -> NDArray[np.float64]:
    return np.stack([boxes[:, 0], size - boxes[:, 3], boxes[:, 2], size - boxes[:, 1]], axis=1)


def rot90_boxes(boxes: NDArray[np.float64], size: int, k: int) -> NDArray[np.float64]:
    """Boxes after ``numpy.rot90(·, k, axes=(-2, -1))`` of a ``size`` square: (x, y) → (y, S - x)."""
    for _ in range(k % 4):
        boxes = np.stack([boxes[:, 1], size - boxes[:, 2], boxes[:, 3], size - boxes[:, 0]], axis=1)
    return boxes


def _geom(a: NDArray[Any] | None, hflip: bool, vflip: bool, k: int) -> NDArray[Any] | None:
    if a is None:
        return None
    if hflip:
        a = a[..., :, ::-1]
    if vflip:
        a = a[..., ::-1, :]
    if k:
        a = np.rot90(a, k, axes=(-2, -1))
    return np.ascontiguousarray(a)


def flip_rotate(ex: Example, *, hflip: bool, vflip: bool, k: int) -> Example:
    """Apply horizontal flip, then vertical flip, then ``k`` quarter turns to pixels and targets."""
    size = ex.image.shape[-1]
    if k % 2 and ex.image.shape[-1] != ex.image.shape[-2]:
        raise ValueError("quarter turns need a square tile")
    boxes = ex.boxes
    if boxes is not None and len(boxes):
        if hflip:
            boxes = hflip_boxes(boxes, size)
        if vflip:
            boxes = vflip_boxes(boxes, ex.image.shape[-2])
        if k:
            boxes = rot90_boxes(boxes, size, k)
    return Example(
        image=_geom(ex.image, hflip, vflip, k),  # type: ignore[arg-type]
        valid=_geom(ex.valid, hflip, vflip, k),  # type: ignore[arg-type]
        image_b=_geom(ex.image_b, hflip, vflip, k), mask=_geom(ex.mask, hflip, vflip, k),
        boxes=boxes, labels=ex.labels, masks=_geom(ex.masks, hflip, vflip, k), extra=ex.extra,
    )


def colour_jitter(image: NDArray[np.float32], valid: NDArray[np.bool_], amount: float,
                  rng: np.random.Generator, *, clip: bool) -> NDArray[np.float32]:
    """Random brightness, contrast and (3 bands) saturation factors in [1 - amount, 1 + amount].

    Invalid (padding) pixels stay 0, as inference reads them; ``clip`` keeps values in 0..1
    (integer sources, whose scaled range is 0..1).
    """
    if amount <= 0:
        return image
    b, c, s = (1.0 + rng.uniform(-amount, amount, size=3)).astype(np.float32)
    x = image * b
    if valid.any():
        mean = x[:, valid].mean(axis=1)[:, None, None]
        x = (x - mean) * c + mean
        if x.shape[0] == 3:
            grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = (x - grey) * s + grey
    if clip:
        x = np.clip(x, 0.0, 1.0)
    x[:, ~valid] = 0.0
    out: NDArray[np.float32] = x.astype(np.float32)
    return out


def augment(ex: Example, cfg: AugmentConfig, rng: np.random.Generator, *, clip: bool) -> Example:
    """Random flips and quarter turns (jointly), then colour jitter of each date independently."""
    h = bool(cfg.hflip and rng.random() < 0.5)
    v = bool(cfg.vflip and rng.random() < 0.5)
    k = int(rng.integers(0, 4)) if cfg.rot90 else 0
    out = flip_rotate(ex, hflip=h, vflip=v, k=k)
    out.image = colour_jitter(out.image, out.valid, cfg.colour, rng, clip=clip)
    if out.image_b is not None:
        out.image_b = colour_jitter(out.image_b, out.valid, cfg.colour, rng, clip=clip)
    return out
