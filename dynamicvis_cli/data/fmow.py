"""fMoW-style per-image metadata: each image with a ``<stem>.json`` beside it.

The JSON holds fMoW's own keys; only ``bounding_boxes`` is read, every other key is ignored::

    {"bounding_boxes": [{"box": [x, y, w, h], "category": "airport"}, ...], "gsd": 0.5, ...}

``box`` is the top-left corner and the size in pixels. The folder is searched recursively, so
fMoW's own tree (``train/<category>/<category>_<n>/<category>_<n>_<k>_rgb.jpg`` + ``.json``)
reads as it is, as does a flat folder. An image without a JSON is an image without objects; a
JSON with ``bounding_boxes`` but no image beside it is an error (a missing image). Classes:
``classes`` when given (an object of another class is an error naming the file), else every
category found, sorted by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynamicvis_cli.data.io import image_header
from dynamicvis_cli.data.records import IMAGE_SUFFIXES, DatasetSpec, Record
from dynamicvis_cli.errors import DatasetError

#: Unpaired JSON files larger than this are not opened (they are not per-image metadata).
_MAX_UNPAIRED_BYTES = 1 << 20
#: How many images :func:`looks_like` inspects before giving up.
_LOOK_LIMIT = 50

Parsed = list[tuple[str, list[float]]]  # (category, [x0, y0, x1, y1])


def _walk_images(root: Path) -> Iterator[Path]:
    """Images under ``root`` (recursively, sorted per folder; hidden folders skipped)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(folder) / name


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from exc


def looks_like(root: Path) -> bool:
    """An image under ``root`` has a ``<stem>.json`` beside it holding ``bounding_boxes``."""
    if not root.is_dir():
        return False
    for n, img in enumerate(_walk_images(root)):
        if n >= _LOOK_LIMIT:
            return False
        meta = img.with_suffix(".json")
        if meta.is_file():
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                return False
            return isinstance(data, dict) and isinstance(data.get("bounding_boxes"), list)
    return False


def parse_fmow_json(path: Path) -> Parsed:
    """(category, xyxy box) of each entry of a metadata file's ``bounding_boxes``.

    Raises:
        DatasetError: not valid JSON, no ``bounding_boxes`` list, an entry without a 4-number
            ``box`` or a ``category``, or a box of non-positive width or height (names the file).
    """
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("bounding_boxes"), list):
        raise DatasetError(path, "no 'bounding_boxes' list (fMoW metadata: "
                           "{\"bounding_boxes\": [{\"box\": [x, y, w, h], \"category\": ...}]})")
    out: Parsed = []
    for i, entry in enumerate(data["bounding_boxes"], 1):
        if not isinstance(entry, dict):
            raise DatasetError(path, f"bounding box {i}: not an object with 'box' and 'category'")
        box, cat = entry.get("box"), entry.get("category")
        if not isinstance(cat, str) or not cat.strip():
            raise DatasetError(path, f"bounding box {i}: no 'category' name")
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise DatasetError(path, f"bounding box {i}: 'box' is not [x, y, w, h] numbers: {box!r}")
        x, y, w, h = (float(v) for v in box)
        if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
            raise DatasetError(path, f"bounding box {i}: non-positive or non-finite size "
                               f"(w={w:g}, h={h:g}) in {box!r}")
        out.append((cat.strip(), [x, y, x + w, y + h]))
    return out


def _check_unpaired(root: Path, paired: set[Path]) -> None:
    """Small JSON files with ``bounding_boxes`` but no image beside them are missing images."""
    for meta in sorted(root.rglob("*.json")):
        if meta in paired or meta.stat().st_size > _MAX_UNPAIRED_BYTES:
            continue
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # not fMoW metadata (an unrelated file)
        if isinstance(data, dict) and "bounding_boxes" in data:
            raise DatasetError(meta, f"boxes for a missing image ({meta.with_suffix('')}.*)")


def load_fmow(root: Path, *, task: str = "detect", classes: Sequence[str] | None = None) -> DatasetSpec:
    """Records of an fMoW-style folder (images with ``<stem>.json`` metadata beside them).

    Raises:
        DatasetError: not a folder, no images, invalid JSON or a malformed box (each names the
            file), a category outside ``classes``, metadata without image, or a task other than
            ``detect`` (fMoW metadata holds boxes only).
    """
    if task != "detect":
        raise DatasetError(root, f"fMoW metadata holds boxes only; it has no {task} labels")
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist")
    images = list(_walk_images(root))
    if not images:
        raise DatasetError(root, "no images")
    parsed: list[tuple[Path, Parsed]] = []
    paired: set[Path] = set()
    for img in images:
        meta = img.with_suffix(".json")
        if meta.is_file():
            paired.add(meta)
            parsed.append((img, parse_fmow_json(meta)))
        else:
            parsed.append((img, []))
    _check_unpaired(root, paired)
    names = list(classes) if classes else sorted({c for _, objs in parsed for c, _ in objs})
    if not names:
        raise DatasetError(root, "no bounding boxes in any metadata file: give --classes")
    records, bands = [], 0
    for img, objs in parsed:
        w, h, count, _ = image_header(img)
        bands = bands or count
        labels = []
        for cat, _ in objs:
            if cat not in names:
                raise DatasetError(img.with_suffix(".json"), f"category '{cat}' is not in the class "
                                   f"list {names}")
            labels.append(names.index(cat))
        boxes = np.asarray([b for _, b in objs], dtype=np.float64).reshape(-1, 4)
        records.append(Record(img, w, h, boxes=boxes, labels=np.asarray(labels, dtype=np.int64),
                              count=count))
    return DatasetSpec(root, "fmow", task, names, records, bands=bands)
