"""YOLO txt: ``images/`` and ``labels/`` side by side, one ``<stem>.txt`` per image.

Each line is ``class cx cy w h`` (box, normalised to 0..1) or ``class x1 y1 x2 y2 ...`` (a
polygon, YOLO's segmentation format; its extent is the box). An image without a txt is an image
without objects. Class names come from ``classes`` or from ``data.yaml`` (``names``),
``classes.txt`` or ``obj.names`` beside the folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dynamicvis_cli.data.imagefolder import list_images
from dynamicvis_cli.data.io import image_header
from dynamicvis_cli.data.records import DatasetSpec, Record, Shape
from dynamicvis_cli.errors import DatasetError


def _class_names(root: Path) -> list[str] | None:
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            import yaml

            data = yaml.safe_load((root / name).read_text(encoding="utf-8")) or {}
            names = data.get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
    for name in ("classes.txt", "obj.names"):
        if (root / name).is_file():
            return [ln.strip() for ln in (root / name).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return None


def _folders(root: Path) -> list[tuple[Path, Path]]:
    """(images folder, labels folder) pairs: ``images/`` ↔ ``labels/``, also one level down."""
    img, lab = root / "images", root / "labels"
    if not img.is_dir() or not lab.is_dir():
        return []
    pairs = [(img, lab)] if list_images(img) else []
    pairs += [(d, lab / d.name) for d in sorted(img.iterdir()) if d.is_dir() and (lab / d.name).is_dir()]
    return pairs


def looks_like(root: Path) -> bool:
    return any(any(lab.glob("*.txt")) for _, lab in _folders(root))


def load_yolo(root: Path, *, task: str = "detect", classes: Sequence[str] | None = None) -> DatasetSpec:
    """Records for a YOLO dataset folder.

    Raises:
        DatasetError: no images, no class names, a txt without image, a malformed line or a
            class index outside the class list (names the file and line).
    """
    folders = _folders(root)
    if not folders:
        raise DatasetError(root, "not a YOLO dataset (expected images/ and labels/ folders)")
    names = list(classes) if classes else _class_names(root)
    if not names:
        raise DatasetError(root, "YOLO class names not found: give classes, or a data.yaml/classes.txt")
    records, bands = [], 0
    for img_dir, lab_dir in folders:
        images = {p.stem: p for p in list_images(img_dir)}
        for txt in sorted(lab_dir.glob("*.txt")):
            if txt.stem not in images and txt.name != "classes.txt":
                raise DatasetError(txt, f"labels for a missing image ({img_dir / txt.stem}.*)")
        for stem, img in images.items():
            w, h, count, _ = image_header(img)
            bands = bands or count
            boxes, labels, shapes = [], [], []
            txt = lab_dir / f"{stem}.txt"
            lines = txt.read_text(encoding="utf-8").splitlines() if txt.is_file() else []
            for n, line in enumerate(lines, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    cls, vals = int(parts[0]), [float(v) for v in parts[1:]]
                except ValueError:
                    raise DatasetError(txt, f"line {n}: not numbers: '{line.strip()}'") from None
                if not 0 <= cls < len(names):
                    raise DatasetError(txt, f"line {n}: class index {cls} outside the class list "
                                       f"(0..{len(names) - 1}: {', '.join(names)})")
                shape: Shape
                if len(vals) == 4:
                    cx, cy, bw, bh = vals
                    box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                    x0, y0, x1, y1 = box
                    shape = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)]
                elif len(vals) >= 6 and len(vals) % 2 == 0:
                    poly = np.asarray(vals, dtype=np.float64).reshape(-1, 2) * [w, h]
                    box = [*poly.min(axis=0), *poly.max(axis=0)]
                    shape = [poly]
                else:
                    raise DatasetError(txt, f"line {n}: expected 'class cx cy w h' or a polygon, "
                                       f"got {len(vals)} values")
                if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                    continue
                boxes.append(box)
                labels.append(cls)
                shapes.append(shape)
            records.append(Record(img, w, h, boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                  labels=np.asarray(labels, dtype=np.int64),
                                  shapes=shapes if task == "instance" else None, count=count))
    if not records:
        raise DatasetError(root, "no images in the YOLO images/ folder(s)")
    return DatasetSpec(root, "yolo", task, names, records, bands=bands)
