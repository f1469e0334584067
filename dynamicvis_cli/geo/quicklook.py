"""``--quicklook out.png``: the result drawn over a decimated view of the input.

The input is read at reduced resolution (long side ≤ ``max_side``, served from overviews when
the file has them), each band stretched between its 2nd and 98th percentiles for display, and
the result drawn on top: class rasters as translucent colours (no data left clear), boxes as
rectangles. Pillow only; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from rasterio.enums import Resampling

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.geo.atomic import atomic_output
from dynamicvis_cli.geo.read import RasterSource

# Distinct colours (tab10-like), cycled for more classes.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _background(source: Path, bands: Sequence[int], max_side: int) -> tuple[NDArray[np.uint8], float]:
    with RasterSource(source) as src:
        shown = list(bands[:3]) if len(bands) >= 3 else [bands[0]] * 3
        data, valid = src.read_decimated(shown, max_side)
        scale = data.shape[-1] / src.width
    rgb = np.zeros((*data.shape[1:], 3), dtype=np.uint8)
    for i, band in enumerate(data):
        values = band[valid]
        lo, hi = (np.percentile(values, [2, 98]) if values.size else (0.0, 1.0))
        rgb[..., i] = np.clip((band - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb, scale


def _save(image: Image.Image, out: Path, overwrite: bool) -> None:
    if out.suffix.lower() != ".png":
        raise DvisUsageError(f"--quicklook {out}: must end in .png")
    with atomic_output(out, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")


def quicklook_classes(source: Path, bands: Sequence[int], classes_tif: Path, out: Path, *,
                      nodata: int = 255, alpha: float = 0.45, max_side: int = 1024,
                      overwrite: bool = False) -> Path:
    """Class raster over the input; class ``k`` in ``PALETTE[k % 10]``."""
    rgb, _ = _background(source, bands, max_side)
    h, w = rgb.shape[:2]
    with rasterio.open(classes_tif) as ds:
        ids = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    colours = np.array(PALETTE, dtype=np.float32)
    shown = ids != nodata
    blend = rgb.astype(np.float32)
    blend[shown] = (1 - alpha) * blend[shown] + alpha * colours[ids[shown] % len(PALETTE)]
    _save(Image.fromarray(blend.astype(np.uint8)), out, overwrite)
    return out


def quicklook_boxes(source: Path, bands: Sequence[int], boxes: NDArray[np.float64],
                    labels: NDArray[np.int64], out: Path, *, max_side: int = 1024,
                    overwrite: bool = False) -> Path:
    """Scene-pixel boxes (xyxy) over the input, one colour per class."""
    rgb, scale = _background(source, bands, max_side)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for (x1, y1, x2, y2), label in zip(boxes * scale, labels):
        draw.rectangle([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)], outline=PALETTE[int(label) % len(PALETTE)])
    _save(image, out, overwrite)
    return out
