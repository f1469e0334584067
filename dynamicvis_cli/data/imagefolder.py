"""ImageFolder: ``ROOT/<class>/<image>`` (torchvision's layout), one label per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dynamicvis_cli.data.io import image_header
from dynamicvis_cli.data.records import IMAGE_SUFFIXES, DatasetSpec, Record
from dynamicvis_cli.errors import DatasetError


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def looks_like(root: Path) -> bool:
    """A folder whose subfolders hold images."""
    subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    return bool(subs) and any(list_images(d) for d in subs)


def load_imagefolder(root: Path, classes: Sequence[str] | None = None) -> DatasetSpec:
    """Records for every image under ``root/<class>/``.

    Args:
        root: the folder of class folders.
        classes: class names in output order; default: the folder names, sorted.

    Raises:
        DatasetError: no class folders or no images, a folder that is not in ``classes``, or an
            image that cannot be decoded.
    """
    if not root.is_dir():
        raise DatasetError(root, "ImageFolder root is not a folder")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DatasetError(root, "no class folders (ImageFolder layout: ROOT/<class>/<image>)")
    names = list(classes) if classes else folders
    extra = [f for f in folders if f not in names]
    if extra:
        raise DatasetError(root / extra[0], f"class folder '{extra[0]}' is not in the class list {names}")
    # a class of the given list without a folder simply has no samples here (a held-out split
    # often lacks a rare class); with no list the folders are the classes
    records = []
    bands = 0
    for idx, name in enumerate(names):
        images = list_images(root / name) if (root / name).is_dir() else []
        for path in images:
            w, h, count, _ = image_header(path)
            bands = bands or count
            records.append(Record(path, w, h, label=idx, count=count))
    if not records:
        raise DatasetError(root, "no images in any class folder")
    return DatasetSpec(root, "imagefolder", "classify", names, records, bands=bands)
