"""Pixel access for training: image headers up front, windowed reads padded past the edges.

Images are read through :class:`~dynamicvis_cli.geo.read.RasterSource`, the reader inference
uses, so values, band choice and the validity of pixels are the same in training and inference
(pixels outside the image or at nodata read as raw 0, exactly as inference pads tiles).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from dynamicvis_cli.data.records import IGNORE_INDEX, MaskCoding
from dynamicvis_cli.errors import DatasetError, DvisError
from dynamicvis_cli.geo.read import RasterSource, error_text


def _strip(exc: BaseException, path: Path) -> str:
    text = str(exc)
    return text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text


def image_header(path: Path) -> tuple[int, int, int, str]:
    """(width, height, band count, dtype) of an image, opening it without reading pixels.

    Raises:
        DatasetError: the file is missing or not a readable image (names the file).
    """
    if not path.is_file():
        raise DatasetError(path, "image file does not exist")
    try:
        with RasterSource(path) as src:
            return src.width, src.height, src.count, src.dtype
    except DvisError as exc:
        raise DatasetError(path, f"image cannot be decoded ({_strip(exc, path)})") from exc


def read_image(path: Path, window: tuple[int, int, int, int],
               bands: Sequence[int]) -> tuple[NDArray[np.float32], NDArray[np.bool_], str]:
    """Raw values of a window (may reach past the edges), its validity and the data type.

    Returns:
        data: float32 (len(bands), h, w), raw units, 0 where not valid.
        valid: bool (h, w).
        dtype: the raster's data type name (for :func:`~dynamicvis_cli.geo.read.normalise`).
    """
    col, row, w, h = window
    try:
        with RasterSource(path) as src:
            data, valid = src.read(Window(col, row, w, h), bands)
            return data, valid, src.dtype
    except DvisError as exc:
        raise DatasetError(path, f"image cannot be read ({_strip(exc, path)})") from exc


def read_label(path: Path, window: tuple[int, int, int, int], coding: MaskCoding) -> NDArray[np.uint8]:
    """(h, w) class indexes of a label raster window; 255 outside the raster.

    Raises:
        DatasetError: unreadable file or a value outside the class list (names the file).
    """
    col, row, w, h = window
    out = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                c0, r0 = max(col, 0), max(row, 0)
                c1, r1 = min(col + w, ds.width), min(row + h, ds.height)
                if c1 <= c0 or r1 <= r0:
                    return out
                win = Window(c0, r0, c1 - c0, r1 - r0)
                if coding.kind == "palette" and ds.count < 3 and ds.colorinterp[0] == ColorInterp.palette:
                    raw = _expand_colormap(ds.read(1, window=win), ds.colormap(1))
                else:
                    nb = 3 if coding.kind == "palette" else 1
                    raw = ds.read(list(range(1, min(nb, ds.count) + 1)), window=win)
    except RasterioError as exc:
        raise DatasetError(path, f"label raster cannot be read ({error_text(exc, path)})") from exc
    out[r0 - row : r1 - row, c0 - col : c1 - col] = coding.decode(raw, path)
    return out


def _expand_colormap(index: NDArray[np.generic], cmap: dict[int, tuple[int, ...]]) -> NDArray[np.uint8]:
    """A palette-mode band → (3, h, w) RGB through its colour table."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for k, rgba in cmap.items():
        if 0 <= k < 256:
            lut[k] = rgba[:3]
    return np.moveaxis(lut[np.asarray(index, dtype=np.uint8)], -1, 0)


def label_header(path: Path) -> tuple[int, int, int]:
    """(width, height, colour band count) of a label raster; a palette-mode band counts as 3."""
    if not path.is_file():
        raise DatasetError(path, "label file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                count = 3 if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette else ds.count
                return ds.width, ds.height, count
    except RasterioError as exc:
        raise DatasetError(path, f"label raster cannot be decoded ({error_text(exc, path)})") from exc


def check_label(path: Path, coding: MaskCoding) -> None:
    """Decode a whole label raster once (up-front validation of its classes)."""
    w, h, _ = label_header(path)
    read_label(path, (0, 0, w, h), coding)
