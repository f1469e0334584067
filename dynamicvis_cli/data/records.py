"""The sample schema every format produces: records (paths + annotations), no pixels yet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dynamicvis_cli.errors import DatasetError

#: Label value that is never trained on (padding, unlabeled pixels, unknown colours if asked).
IGNORE_INDEX = 255

#: Image file suffixes the folder formats look for (anything rasterio/GDAL reads works).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".gif")

TASK_KINDS = ("classify", "segment", "change", "detect", "instance")

#: One instance's shape: polygons (each (M, 2) x, y in image pixels), a bitmap (H, W) bool, or a
#: shapely geometry in image pixel coordinates (vector labels; holes allowed).
Shape = Any


@dataclass
class Record:
    """One training item as found on disk.

    Attributes:
        image: the image (or first date).
        width, height: its size in pixels (checked up front).
        image_b: the second date (change).
        label: class index (classify).
        mask: label raster (segment, change), same size as the image.
        boxes: (N, 4) float64 xyxy in image pixels (detect, instance).
        labels: (N,) int64 class indexes of the boxes, 0-based.
        shapes: per box its polygons or bitmap (instance).
        region: (col, row, width, height) the item is restricted to (a chip of a scene), or None.
        count: number of bands of the image.
    """

    image: Path
    width: int
    height: int
    image_b: Path | None = None
    label: int | None = None
    mask: Path | None = None
    boxes: NDArray[np.float64] | None = None
    labels: NDArray[np.int64] | None = None
    shapes: list[Shape] | None = None
    region: tuple[int, int, int, int] | None = None
    count: int = 3

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(col, row, width, height) of the part of the image this record covers."""
        return self.region if self.region is not None else (0, 0, self.width, self.height)


@dataclass
class MaskCoding:
    """How label rasters encode classes.

    ``kind``: ``"index"`` (one band of class indexes, ``ignore_index`` ignored), ``"binary"``
    (change: 0 = class 0, 1 or 255 = class 1) or ``"palette"`` (RGB colours, ``palette[i]`` is
    class i; ``ignore_colours`` become ``IGNORE_INDEX``).
    """

    kind: str
    num_classes: int
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_colours: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX

    def decode(self, raw: NDArray[np.generic], path: object) -> NDArray[np.uint8]:
        """(bands, h, w) raw label values → (h, w) uint8 class indexes, 255 = ignore.

        Raises:
            DatasetError: a value or colour outside the class list (names the file).
        """
        if self.kind == "palette":
            if raw.shape[0] < 3:
                raise DatasetError(path, f"a colour mask needs 3 bands, this one has {raw.shape[0]}")
            rgb = raw[:3].astype(np.uint32)
            code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            out = np.full(code.shape, 254, dtype=np.uint8)
            for i, c in enumerate(self.palette):
                out[code == ((c[0] << 16) | (c[1] << 8) | c[2])] = i
            for c in self.ignore_colours:
                out[code == ((c[0] << 16) | (c[1] << 8) | c[2])] = self.ignore_index
            bad = out == 254
            if bad.any():
                v = int(code[bad][0])
                known = ", ".join(f"#{(a << 16) | (b << 8) | d:06X}" for a, b, d in self.palette)
                raise DatasetError(path, f"colour #{v:06X} is not in the palette ({known}); "
                                   "add it to the palette or to ignore_colours")
            return out
        band = np.asarray(raw[0])
        if self.kind == "binary":
            out = np.where(band > 0, 1, 0).astype(np.uint8)
            odd = (band != 0) & (band != 1) & (band != 255)
            if odd.any():
                raise DatasetError(path, f"change label value {int(band[odd][0])} is neither 0 nor 1/255")
            return out
        if self.kind != "index":
            raise ValueError(f"unknown mask coding '{self.kind}'")
        bad = (band >= self.num_classes) & (band != self.ignore_index)
        if bad.any() or (band < 0).any():
            v = int(band[bad][0]) if bad.any() else int(band.min())
            raise DatasetError(path, f"class index {v} outside the class list (0..{self.num_classes - 1}, "
                               f"{self.ignore_index} = ignore)")
        return band.astype(np.uint8)


@dataclass
class DatasetSpec:
    """A dataset found on disk: its records, class names and (for dense tasks) mask coding."""

    root: Path
    format: str
    task: str
    classes: list[str]
    records: list[Record]
    coding: MaskCoding | None = None
    bands: int = 3
    background: int | None = None  # segment from vector labels: class of unlabelled pixels

    def __post_init__(self) -> None:
        if not self.records:
            raise DatasetError(self.root, f"no {self.task} samples found ({self.format} layout)")

    def check_bands(self, bands: list[int]) -> None:
        """Every image has the 1-based ``bands`` (checked before training, from the headers)."""
        need = max(bands)
        for rec in self.records:
            if rec.count < need:
                hint = f"; for example --bands {','.join(['1'] * len(bands))}" if rec.count == 1 else ""
                raise DatasetError(rec.image, f"image has {rec.count} band(s) but band {need} is "
                                   f"needed (bands {bands}); choose others with --bands{hint}")
