"""NWPU VHR-10 ground truth: ``images/NNN.jpg`` with ``ground_truth/NNN.txt`` lines
``(x1,y1),(x2,y2),a``: top-left and bottom-right corners in pixels, class id ``a`` from 1.

Spaces inside the brackets and at line ends occur in the original files and are accepted.
Boxes only: for instance segmentation use the set's COCO file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dynamicvis_cli.data.imagefolder import list_images
from dynamicvis_cli.data.io import image_header
from dynamicvis_cli.data.records import DatasetSpec, Record
from dynamicvis_cli.errors import DatasetError

NWPU_CLASSES = ("airplane", "ship", "storage tank", "baseball diamond", "tennis court", "basketball court",
                "ground track field", "harbor", "bridge", "vehicle")
_NUM = r"\s*(-?[\d.]+)\s*"
_LINE = re.compile(rf"^\({_NUM},{_NUM}\)\s*,\s*\({_NUM},{_NUM}\)\s*,\s*(\d+)\s*$")
_GT_FOLDERS = ("ground_truth", "ground truth")


def gt_folder(root: Path) -> Path | None:
    return next((root / g for g in _GT_FOLDERS if (root / g).is_dir()), None)


def looks_like(root: Path) -> bool:
    gt = gt_folder(root)
    if gt is None or not (root / "images").is_dir():
        return False
    first = next(iter(sorted(gt.glob("*.txt"))), None)
    return first is not None and any(_LINE.match(ln.strip()) for ln in first.read_text().splitlines()[:3])


def parse_nwpu_txt(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 4) xyxy float64, labels (N,) int64 0-based) of one txt file."""
    boxes, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise DatasetError(path, f"line {n}: not '(x1,y1),(x2,y2),class': '{line.strip()}'")
        x1, y1, x2, y2 = (float(m.group(i)) for i in range(1, 5))
        cls = int(m.group(5))
        if not 1 <= cls <= num_classes:
            raise DatasetError(path, f"line {n}: class id {cls} outside the class list (1..{num_classes})")
        boxes.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
        labels.append(cls - 1)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def load_nwpu(root: Path, *, task: str = "detect", classes: Sequence[str] | None = None) -> DatasetSpec:
    """Records for an NWPU VHR-10 folder (``images/`` + ``ground_truth/``).

    Raises:
        DatasetError: no images, a txt without image, a malformed line or a class id outside the
            class list (names the file and line), or ``task='instance'`` (no masks in this format).
    """
    if task == "instance":
        raise DatasetError(root, "NWPU txt files hold boxes only; instance segmentation needs polygons "
                           "(use the set's COCO json)")
    gt = gt_folder(root)
    if gt is None:
        raise DatasetError(root, "not an NWPU VHR-10 folder (expected images/ and ground_truth/)")
    names = list(classes) if classes else list(NWPU_CLASSES)
    images = {p.stem: p for p in list_images(root / "images")}
    if not images:
        raise DatasetError(root / "images", "no images")
    for txt in sorted(gt.glob("*.txt")):
        if txt.stem not in images:
            raise DatasetError(txt, f"boxes for a missing image ({root / 'images' / txt.stem}.*)")
    records, bands = [], 0
    for stem, img in images.items():
        w, h, count, _ = image_header(img)
        bands = bands or count
        txt = gt / f"{stem}.txt"
        boxes, labels = parse_nwpu_txt(txt, len(names)) if txt.is_file() else (
            np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
        records.append(Record(img, w, h, boxes=boxes, labels=labels, count=count))
    return DatasetSpec(root, "nwpu", task, names, records, bands=bands)
