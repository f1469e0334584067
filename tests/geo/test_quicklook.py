"""Quicklook PNGs: the result drawn where it belongs on a decimated view of the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from dynamicvis_cli.errors import DvisUsageError, OutputExistsError
from dynamicvis_cli.geo.quicklook import PALETTE, quicklook_boxes, quicklook_classes
from tests.conftest import SHARED


@pytest.fixture
def rgb_byte_tif() -> Path:
    path = SHARED / "data" / "geotiff" / "RGB.byte.tif"
    if not path.exists():
        pytest.skip(f"{path} not found (needs ../shared/data)")
    return path


def test_boxes_are_drawn_at_their_scaled_position(rgb_byte_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.png"
    boxes = np.array([[400.0, 300.0, 500.0, 380.0]])
    quicklook_boxes(rgb_byte_tif, [1, 2, 3], boxes, np.array([2]), out, max_side=400)
    img = np.asarray(Image.open(out))
    assert img.shape == (363, 400, 3)  # 791x718 scaled to a 400 px long side
    s = 400 / 791
    assert tuple(img[int(300 * s), int(450 * s)]) == PALETTE[2]  # top edge of the box
    with pytest.raises(OutputExistsError):
        quicklook_boxes(rgb_byte_tif, [1, 2, 3], boxes, np.array([2]), out)
    with pytest.raises(DvisUsageError, match=".png"):
        quicklook_boxes(rgb_byte_tif, [1, 2, 3], boxes, np.array([2]), tmp_path / "q.jpg")


def test_classes_tint_only_where_there_is_a_class(rgb_byte_tif: Path, tmp_path: Path) -> None:
    classes = tmp_path / "c.tif"
    with rasterio.open(rgb_byte_tif) as src:
        profile = src.profile | {"count": 1, "nodata": 255}
        ids = np.full((src.height, src.width), 255, dtype=np.uint8)
    ids[:, : src.width // 2] = 3
    with rasterio.open(classes, "w", **profile) as dst:
        dst.write(ids, 1)
    tinted, plain = tmp_path / "t.png", tmp_path / "p.png"
    quicklook_classes(rgb_byte_tif, [1, 2, 3], classes, tinted)
    ids[:] = 255
    with rasterio.open(classes, "w", **profile) as dst:
        dst.write(ids, 1)
    quicklook_classes(rgb_byte_tif, [1, 2, 3], classes, plain)
    a = np.asarray(Image.open(tinted)).astype(int)
    b = np.asarray(Image.open(plain)).astype(int)
    half = a.shape[1] // 2
    assert np.abs(a[:, : half - 2] - b[:, : half - 2]).sum() > 0
    assert (a[:, half + 2 :] == b[:, half + 2 :]).all()
