"""Records → tensors: windows read from disk, augmented, normalised exactly as inference does.

A training item is addressed by ``(epoch, index)`` so its random crop, flips and colours depend
only on the seed, the epoch and the index — not on the process, rank or reader worker that loads
it: a run gives the same batches on 1 or N processes and after a resume.

Normalisation is :func:`dynamicvis_cli.geo.read.normalise`'s: raw values scaled by data type to
0..1, then ``(x - mean) / std`` per band; pixels outside the image read as raw 0, as inference
pads tiles at scene edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from rasterio.features import rasterize
from shapely import affinity
from torch import Tensor
from torch.utils.data import Dataset

from dynamicvis_cli.data.augment import (
    AugmentConfig,
    Example,
    augment,
    grid_windows,
    sample_window,
    window_boxes,
)
from dynamicvis_cli.data.io import read_image, read_label
from dynamicvis_cli.data.records import IGNORE_INDEX, DatasetSpec, Record, Shape
from dynamicvis_cli.geo.read import normalise


def _resize(x: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    if x.shape[-2:] == (size, size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=x.shape[-1] > size)
    return out[0].numpy()


def _resize_nearest(x: NDArray[Any], size: int) -> NDArray[Any]:
    if x.shape[-2:] == (size, size):
        return x
    src = x.shape[-1]
    idx = np.minimum((np.arange(size) + 0.5) * src / size, src - 1).astype(np.intp)
    out: NDArray[Any] = np.ascontiguousarray(x[..., idx[:, None], idx[None, :]])
    return out


def _to_tile(geom: Any, window: tuple[int, int, int, int], size: int) -> Any:
    col, row, side, _ = window
    f = size / side
    return affinity.affine_transform(geom, [f, 0, 0, f, -col * f, -row * f])


def rasterise_classes(shapes: Sequence[Any], labels: Sequence[int] | NDArray[np.int64],
                      window: tuple[int, int, int, int], size: int,
                      background: int | None) -> NDArray[np.uint8]:
    """(size, size) class indexes of shapely geometries (later ones win); ``background`` (or 255)
    elsewhere."""
    fill = IGNORE_INDEX if background is None else background
    pairs = [(_to_tile(g, window, size), int(k)) for g, k in zip(shapes, labels)]
    if not pairs:
        return np.full((size, size), fill, dtype=np.uint8)
    out: NDArray[np.uint8] = rasterize(pairs, out_shape=(size, size), fill=fill, dtype="uint8")
    return out


def rasterise_shapes(shapes: Sequence[Shape], window: tuple[int, int, int, int],
                     size: int) -> NDArray[np.uint8]:
    """(N, size, size) uint8 masks of instances (polygons, bitmaps or geometries) in ``window``."""
    col, row, side, _ = window
    f = size / side
    out = np.zeros((len(shapes), size, size), dtype=np.uint8)
    for i, shape in enumerate(shapes):
        if hasattr(shape, "geom_type"):  # a shapely geometry (holes respected)
            out[i] = rasterize([(_to_tile(shape, window, size), 1)], out_shape=(size, size), fill=0,
                               dtype="uint8")
            continue
        if isinstance(shape, np.ndarray):  # a bitmap of the whole image
            h, w = shape.shape
            crop = np.zeros((side, side), dtype=np.uint8)
            c0, r0, c1, r1 = max(col, 0), max(row, 0), min(col + side, w), min(row + side, h)
            if c1 > c0 and r1 > r0:
                crop[r0 - row : r1 - row, c0 - col : c1 - col] = shape[r0:r1, c0:c1]
            out[i] = _resize_nearest(crop, size)
            continue
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in shape:
            pts = (poly - [col, row]) * f
            draw.polygon([(float(x), float(y)) for x, y in pts], fill=1, outline=1)
        out[i] = np.asarray(canvas, dtype=np.uint8)
    return out


class TaskDataset(Dataset[dict[str, Any]]):
    """Items of one task as tensors.

    Training (``augment`` given): item ``(epoch, i)`` is a random window of record
    ``i % len(records)``. Evaluation (``augment=None``): the items are fixed windows — the whole
    image for classification (run at its own size, as ``dvis classify`` does), a grid of
    ``tile_size`` tiles for the other tasks.

    Item keys: ``image`` (C, S, S) float32 normalised; ``image_b`` (change); ``label`` (classify,
    int); ``mask`` (S, S) int64, 255 = ignore (segment, change); ``boxes`` (N, 4) float32 xyxy px,
    ``labels`` (N,) int64 0-based (detect, instance); ``masks`` (N, S, S) uint8 (instance).
    """

    def __init__(self, spec: DatasetSpec, *, tile_size: int, bands: Sequence[int],
                 mean: Sequence[float], std: Sequence[float], augment: AugmentConfig | None,
                 seed: int = 0, repeat: int = 1) -> None:
        self.spec = spec
        self.task = spec.task
        self.tile = tile_size
        self.bands = list(bands)
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.augment = augment
        self.seed = seed
        self.repeat = max(1, repeat)
        self.items: list[tuple[int, tuple[int, int, int, int] | None]] = []
        if augment is None:
            for i, rec in enumerate(spec.records):
                if self.task == "classify":
                    self.items.append((i, rec.bounds))
                else:
                    self.items.extend((i, w) for w in grid_windows(rec.bounds, tile_size))
        else:
            self.items = [(i % len(spec.records), None) for i in range(len(spec.records) * self.repeat)]

    def __len__(self) -> int:
        return len(self.items)

    # -- reading -----------------------------------------------------------------------------

    def _read(self, path: Any, window: tuple[int, int, int, int],
              size: int | None) -> tuple[NDArray[np.float32], NDArray[np.bool_], bool]:
        raw, valid, dtype = read_image(path, window, self.bands)
        c = raw.shape[0]
        x01 = normalise(raw, dtype, [0.0] * c, [1.0] * c)
        x01[:, ~valid] = 0.0
        integer = np.dtype(dtype).kind in "ui"
        if size is None:
            return x01, valid, integer
        return _resize(x01, size), _resize_nearest(valid, size), integer

    def example(self, rec: Record, window: tuple[int, int, int, int],
                size: int | None) -> tuple[Example, bool]:
        """Read ``window`` of a record's image(s) and targets, resized to ``size`` (None: as is)."""
        image, valid, integer = self._read(rec.image, window, size)
        ex = Example(image=image, valid=valid)
        if rec.image_b is not None:
            ex.image_b = self._read(rec.image_b, window, size)[0]
        if rec.mask is not None:
            assert self.spec.coding is not None
            label = read_label(rec.mask, window, self.spec.coding)
            ex.mask = _resize_nearest(label, size) if size is not None else label
            ex.mask[~valid] = IGNORE_INDEX
        if self.task == "segment" and rec.mask is None and rec.shapes is not None and rec.labels is not None:
            out = size if size is not None else window[2]
            ex.mask = rasterise_classes(rec.shapes, rec.labels, window, out, self.spec.background)
            ex.mask[~valid] = IGNORE_INDEX
        if self.task in ("detect", "instance", "region") and rec.boxes is not None and rec.labels is not None:
            min_visible = self.augment.min_visible if self.augment is not None else 0.5
            out = size if size is not None else window[2]
            ex.boxes, ex.labels, keep = window_boxes(rec.boxes, rec.labels, window, out, min_visible)
            if self.task == "instance" and rec.shapes is not None:
                ex.masks = rasterise_shapes([rec.shapes[k] for k in keep], window, out)
        return ex, integer

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rec_idx, window = self.items[i]
        rec = self.spec.records[rec_idx]
        rng = None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, i])
            around = None
            if (self.task in ("detect", "instance", "region") and rec.boxes is not None and len(rec.boxes)
                    and rng.random() < self.augment.object_crop):
                around = tuple(rec.boxes[int(rng.integers(len(rec.boxes)))])
            window = sample_window(rec.bounds, self.tile, self.augment.scale, rng, around)
        assert window is not None
        # classification is evaluated at the image's own size, as dvis classify runs it
        size = None if self.augment is None and self.task == "classify" else self.tile
        ex, integer = self.example(rec, window, size)
        if self.augment is not None and rng is not None:
            ex = augment(ex, self.augment, rng, clip=integer)
        return self._to_item(ex, rec)

    def _to_item(self, ex: Example, rec: Record) -> dict[str, Any]:
        item: dict[str, Any] = {"image": torch.from_numpy((ex.image - self.mean) / self.std)}
        if ex.image_b is not None:
            item["image_b"] = torch.from_numpy((ex.image_b - self.mean) / self.std)
        if self.task == "classify":
            item["label"] = int(rec.label if rec.label is not None else -1)
        if ex.mask is not None:
            item["mask"] = torch.from_numpy(ex.mask.astype(np.int64))
        if ex.boxes is not None:
            item["boxes"] = torch.from_numpy(ex.boxes.astype(np.float32)).reshape(-1, 4)
            item["labels"] = torch.from_numpy(np.asarray(ex.labels, dtype=np.int64))
        if ex.masks is not None:
            item["masks"] = torch.from_numpy(ex.masks)
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (and dense labels); keep per-image box targets as lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key in ("boxes", "labels", "masks"):
            out[key] = values
        elif key == "label":
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = torch.stack(values) if all(v.shape == values[0].shape for v in values) else values
    return out


def as_tensor(x: Tensor | list[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)

