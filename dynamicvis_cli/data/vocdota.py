"""Pascal VOC xml and DOTA txt: one annotation file per image.

* **VOC**: ``Annotations/<stem>.xml`` with ``JPEGImages/`` (the VOC layout), or each
  ``<stem>.xml`` beside its image. Boxes ``<bndbox>`` xmin/ymin/xmax/ymax are taken as pixel
  edges as written; ``<difficult>`` objects are kept.
* **DOTA**: ``labelTxt/<stem>.txt`` with ``images/``, or each ``<stem>.txt`` beside its image;
  optional header lines (``imagesource:``, ``gsd:``), then ``x1 y1 ... x4 y4 class difficult``.
  The oriented quadrilateral is the instance polygon; its axis-aligned extent is the box.

Classes: ``classes`` when given (an object of another class is an error naming the file),
else every class name found, sorted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dynamicvis_cli.data.imagefolder import list_images
from dynamicvis_cli.data.io import image_header
from dynamicvis_cli.data.records import DatasetSpec, Record
from dynamicvis_cli.errors import DatasetError

Parsed = list[tuple[str, list[float], list[float] | None]]  # (class, box, polygon or None)


def _voc_pairs(root: Path) -> list[tuple[Path, Path | None]]:
    """(annotation, image) pairs of a VOC folder."""
    if (root / "Annotations").is_dir():
        xmls = sorted((root / "Annotations").glob("*.xml"))
        images_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root / "images"
    else:
        xmls = sorted(root.glob("*.xml"))
        images_dir = root
    by_stem = {p.stem: p for p in list_images(images_dir)} if images_dir.is_dir() else {}
    pairs = []
    for x in xmls:
        name = None
        try:
            name = ET.parse(x).getroot().findtext("filename")
        except ET.ParseError:
            pass
        img = images_dir / name if name and (images_dir / name).is_file() else by_stem.get(x.stem)
        pairs.append((x, img))
    return pairs


def _dota_pairs(root: Path) -> list[tuple[Path, Path | None]]:
    if (root / "labelTxt").is_dir():
        txts, images_dir = sorted((root / "labelTxt").glob("*.txt")), root / "images"
    else:
        txts, images_dir = sorted(root.glob("*.txt")), root
    by_stem = {p.stem: p for p in list_images(images_dir)} if images_dir.is_dir() else {}
    return [(t, by_stem.get(t.stem)) for t in txts]


def _is_dota_line(line: str) -> bool:
    parts = line.split()
    if len(parts) not in (9, 10):
        return False
    try:
        [float(v) for v in parts[:8]]
    except ValueError:
        return False
    return True


def looks_like_voc(root: Path) -> bool:
    if not root.is_dir():
        return False
    xml = next(iter(sorted((root / "Annotations").glob("*.xml"))), None) if (root / "Annotations").is_dir() \
        else next(iter(sorted(root.glob("*.xml"))), None)
    return xml is not None and "<annotation" in xml.read_text(encoding="utf-8", errors="replace")[:2000]


def looks_like_dota(root: Path) -> bool:
    if not root.is_dir():
        return False
    for txt, img in _dota_pairs(root)[:5]:
        lines = [ln for ln in txt.read_text(encoding="utf-8", errors="replace").splitlines()
                 if ln.strip() and ":" not in ln]
        if img is not None and lines and _is_dota_line(lines[0]):
            return True
    return False


def parse_voc(path: Path) -> Parsed:
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(path, f"not valid XML ({exc})") from exc
    out: Parsed = []
    for i, obj in enumerate(tree.iter("object")):
        name, bb = obj.findtext("name"), obj.find("bndbox")
        if not name or bb is None:
            raise DatasetError(path, f"object {i + 1}: no <name> or <bndbox>")
        try:
            box = [float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise DatasetError(path, f"object {i + 1}: <bndbox> values are not numbers") from None
        if any(np.isnan(box)):
            raise DatasetError(path, f"object {i + 1}: <bndbox> lacks xmin/ymin/xmax/ymax")
        out.append((name.strip(), box, None))
    return out


def parse_dota(path: Path) -> Parsed:
    out: Parsed = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (":" in line and not _is_dota_line(line)):
            continue  # header lines: imagesource:..., gsd:...
        if not _is_dota_line(line):
            raise DatasetError(path, f"line {n}: not 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]': "
                               f"'{line.strip()}'")
        parts = line.split()
        poly = [float(v) for v in parts[:8]]
        xs, ys = poly[0::2], poly[1::2]
        out.append((parts[8], [min(xs), min(ys), max(xs), max(ys)], poly))
    return out


def load_voc_dota(root: Path, fmt: str, *, task: str = "detect",
                  classes: Sequence[str] | None = None) -> DatasetSpec:
    """Records of a VOC (``fmt="voc"``) or DOTA (``fmt="dota"``) folder.

    Raises:
        DatasetError: no annotations, an annotation without image, a malformed file or a class
            outside the class list (each names the file).
    """
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist")
    if task == "instance" and fmt == "voc":
        raise DatasetError(root, "VOC xml holds boxes only; instance segmentation needs polygons")
    pairs = _voc_pairs(root) if fmt == "voc" else _dota_pairs(root)
    if not pairs:
        raise DatasetError(root, f"no {fmt.upper()} annotation files found")
    parse = parse_voc if fmt == "voc" else parse_dota
    parsed = []
    for ann, img in pairs:
        if img is None:
            raise DatasetError(ann, "annotations for a missing image")
        parsed.append((ann, img, parse(ann)))
    names = list(classes) if classes else sorted({c for _, _, objs in parsed for c, _, _ in objs})
    if not names:
        raise DatasetError(root, "no objects in any annotation file: give --classes")
    records, bands = [], 0
    for ann, img, objs in parsed:
        w, h, count, _ = image_header(img)
        bands = bands or count
        boxes, labels, shapes = [], [], []
        for cls, box, poly in objs:
            if cls not in names:
                raise DatasetError(ann, f"class '{cls}' is not in the class list {names}")
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            boxes.append(box)
            labels.append(names.index(cls))
            shapes.append([np.asarray(poly, dtype=np.float64).reshape(-1, 2)] if poly is not None else None)
        records.append(Record(img, w, h, boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                              labels=np.asarray(labels, dtype=np.int64),
                              shapes=shapes if task == "instance" else None, count=count))
    return DatasetSpec(root, fmt, task, names, records, bands=bands)
