"""COCO JSON (``instances_*.json``): boxes, polygons and RLE masks → detection/instance records.

Category ids map to class indexes in the order of the file's ``categories`` sorted by id (or
the order of ``classes`` when given, matched by name). Crowd annotations (``iscrowd: 1``) are
skipped, as torchvision's reference scripts do; boxes under one pixel wide or high are dropped.
Images are looked up relative to ``image_root`` (default: the JSON's folder, then its
``images/`` subfolder, then ``../images``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dynamicvis_cli.data.io import image_header
from dynamicvis_cli.data.records import DatasetSpec, Record, Shape
from dynamicvis_cli.errors import DatasetError


def rle_counts(counts: str | Sequence[int]) -> list[int]:
    """Run lengths of an RLE mask; a string is COCO's compressed form (pycocotools' rleFrString)."""
    if not isinstance(counts, str):
        return [int(c) for c in counts]
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_rle(rle: dict[str, Any]) -> NDArray[np.bool_]:
    """A COCO RLE (``{"size": [h, w], "counts": ...}``) → (h, w) bool; runs are column-major."""
    h, w = (int(v) for v in rle["size"])
    flat = np.zeros(h * w, dtype=np.bool_)
    pos, value = 0, False
    for n in rle_counts(rle["counts"]):
        if value:
            flat[pos : pos + n] = True
        pos += n
        value = not value
    return flat.reshape(w, h).T


def _image_root(json_path: Path, image_root: Path | None, first: str) -> Path:
    if image_root is not None:
        return image_root
    for cand in (json_path.parent, json_path.parent / "images", json_path.parent.parent / "images"):
        if (cand / first).is_file():
            return cand
    return json_path.parent


def load_coco(path: Path, *, task: str = "detect", classes: Sequence[str] | None = None,
              image_root: Path | None = None) -> DatasetSpec:
    """Records for the images of a COCO instances file.

    Args:
        path: the JSON file.
        task: ``detect`` (boxes) or ``instance`` (boxes + polygons/RLE, required on every
            non-crowd annotation).
        classes: class names to use, matched against category names (default: all categories).
        image_root: folder the ``file_name`` entries are relative to.

    Raises:
        DatasetError: unreadable JSON, an annotation of an unknown image or category, a missing
            image, an instance without segmentation (each names the file and the entry).
    """
    if not path.is_file():
        raise DatasetError(path, "COCO annotation file does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images, anns, cats = data["images"], data.get("annotations", []), data["categories"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(path, f"not a COCO instances file ({type(exc).__name__}: {exc})") from exc
    cats = sorted(cats, key=lambda c: c["id"])
    by_name = {str(c["name"]): int(c["id"]) for c in cats}
    names = list(classes) if classes else [str(c["name"]) for c in cats]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DatasetError(path, f"class '{unknown[0]}' is not a category ({', '.join(by_name)})")
    index = {by_name[n]: i for i, n in enumerate(names)}
    if not images:
        raise DatasetError(path, "no images listed")
    root = _image_root(path, image_root, str(images[0]["file_name"]))
    per_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in images}
    for a in anns:
        if int(a["image_id"]) not in per_image:
            raise DatasetError(path, f"annotation {a.get('id')} refers to image id {a['image_id']}, "
                               "which is not in 'images'")
        if int(a["category_id"]) not in index:
            if int(a["category_id"]) in by_name.values():
                continue  # a category left out of the chosen classes
            raise DatasetError(path, f"annotation {a.get('id')} has category_id {a['category_id']}, "
                               f"outside the categories {sorted(by_name.values())}")
        if not a.get("iscrowd", 0):
            per_image[int(a["image_id"])].append(a)
    records = []
    bands = 0
    for im in images:
        file = root / str(im["file_name"])
        if not file.is_file():
            raise DatasetError(path, f"image '{im['file_name']}' (id {im['id']}) not found at {file}")
        w, h, count, _ = image_header(file)
        bands = bands or count
        boxes, labels, shapes = [], [], []
        for a in per_image[int(im["id"])]:
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if bw < 1 or bh < 1:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(index[int(a["category_id"])])
            if task == "instance":
                shapes.append(_shape(a, path))
        records.append(Record(file, w, h, boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                              labels=np.asarray(labels, dtype=np.int64),
                              shapes=shapes if task == "instance" else None, count=count))
    return DatasetSpec(path, "coco", task, names, records, bands=bands)


def _shape(ann: dict[str, Any], path: Path) -> Shape:
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg if len(p) >= 6]
        if polys:
            return polys
    if isinstance(seg, dict) and "counts" in seg:
        return decode_rle(seg)
    raise DatasetError(path, f"annotation {ann.get('id')} has no polygon or RLE segmentation "
                       "(instance segmentation needs one on every object)")
