"""Fixtures of the retrieval tests: real rasters from ../shared/data, the tiny model, one archive.

The archive is built once per session from real chips (RGB.byte.tif, 128 px) with the tiny
architecture and random weights: the tests check files, ids, coordinates and consistency, not
retrieval quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SHARED

DATA = SHARED / "data"


def data_file(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (needs ../shared/data)")
    return path


@pytest.fixture(scope="session")
def rgb_byte_tif() -> Path:
    return data_file("geotiff", "RGB.byte.tif")


@pytest.fixture(scope="session")
def embedder() -> Any:
    from dynamicvis_cli.retrieval.embed import load_embedder

    return load_embedder("tiny", device="cpu", random_weights=True, seed=0)


def cut_chips(folder: Path, image: Path, mask: Path | None, size: int, count: int) -> list[Path]:
    """``count`` real chips of ``image`` as PNG under ``folder/<label>/`` (label: the mask's
    majority colour class, or ``all``)."""
    from PIL import Image

    img = np.asarray(Image.open(image).convert("RGB"))
    colours = np.asarray(Image.open(mask).convert("RGB")) if mask is not None else None
    names = {(0x3C, 0x10, 0x98): "building", (0x84, 0x29, 0xF6): "land", (0x6E, 0xC1, 0xE4): "road",
             (0xFE, 0xDD, 0x3A): "vegetation", (0xE2, 0xA9, 0x29): "water"}
    out = []
    positions = [(r, c) for r in range(0, img.shape[0] - size + 1, size)
                 for c in range(0, img.shape[1] - size + 1, size)]
    for r, c in positions[:count]:
        label = "all"
        if colours is not None:
            patch = colours[r:r + size, c:c + size].reshape(-1, 3)
            keys, n = np.unique(patch, axis=0, return_counts=True)
            known = [(int(k), names[tuple(int(v) for v in key)]) for key, k in zip(keys, n)
                     if tuple(int(v) for v in key) in names]
            label = max(known)[1] if known else "unlabeled"
        path = folder / label / f"{image.stem}_r{r}_c{c}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[r:r + size, c:c + size]).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="session")
def dubai_chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real 64 px chips from a Dubai image, in class folders by their mask's majority."""
    image = data_file("dubai", "Tile 1", "images", "image_part_001.jpg")
    mask = data_file("dubai", "Tile 1", "masks", "image_part_001.png")
    folder = tmp_path_factory.mktemp("dubai_chips")
    cut_chips(folder, image, mask, 64, 16)
    return folder


@pytest.fixture(scope="session")
def built_archive(tmp_path_factory: pytest.TempPathFactory, embedder: Any, rgb_byte_tif: Path) -> Path:
    """A flat archive of RGB.byte.tif in 128 px chips (read-only for tests: copy to modify)."""
    from dynamicvis_cli.retrieval import archive as arc
    from dynamicvis_cli.retrieval import ingest
    from dynamicvis_cli.retrieval.codes import code_spec
    from dynamicvis_cli.retrieval.faiss_index import IndexParams

    path = tmp_path_factory.mktemp("archives") / "rgb.dvx"
    ingest.build(path, [str(rgb_byte_tif)], embedder, code=code_spec("sign", embedder.dim),
              params=IndexParams("flat"), settings=arc.ChipSettings(chip_size=128, min_valid=0.5))
    return path


@pytest.fixture()
def archive_copy(built_archive: Path, tmp_path: Path) -> Path:
    dst = tmp_path / built_archive.name
    shutil.copytree(built_archive, dst)
    return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show that nothing was modified)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
