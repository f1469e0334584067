"""Label-format conversion: detection sets to COCO JSON or YOLO txt, colour masks to class-index
masks. The input is any :class:`~dynamicvis_cli.data.records.DatasetSpec` (so NWPU VHR-10 txt,
YOLO, COCO and geo sets all convert); outputs appear whole (temporary name, then rename)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dynamicvis_cli.data.io import read_label
from dynamicvis_cli.data.records import DatasetSpec
from dynamicvis_cli.errors import DatasetError
from dynamicvis_cli.geo.atomic import atomic_output

TARGETS = ("coco", "yolo", "index-masks")


def _place(src: Path, dest: Path) -> None:
    """Hard-link an image into the output (a copy across file systems)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _unique_names(spec: DatasetSpec) -> list[str]:
    """Output file names of the records' images; clashes (same name, other folder) get a prefix."""
    names: list[str] = []
    seen: set[str] = set()
    for i, rec in enumerate(spec.records):
        name = rec.image.name
        if name in seen:
            name = f"{i:06d}_{name}"
        seen.add(name)
        names.append(name)
    return names


def _polygons(shape: Any) -> list[list[float]]:
    if hasattr(shape, "geom_type"):
        geoms = getattr(shape, "geoms", [shape])
        return [np.asarray(g.exterior.coords).reshape(-1).round(2).tolist() for g in geoms]
    if isinstance(shape, list):
        return [np.asarray(p).reshape(-1).round(2).tolist() for p in shape]
    return []


def to_coco(spec: DatasetSpec, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write a COCO instances file; ``file_name`` is relative to its folder (images stay put)."""
    if spec.task not in ("detect", "instance"):
        raise DatasetError(spec.root, f"COCO output holds boxes; this is a {spec.task} dataset")
    if any(r.region is not None for r in spec.records):
        raise DatasetError(spec.root, "geo datasets convert to COCO through their chips: not supported yet")
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, rec in enumerate(spec.records, 1):
        images.append({"id": i, "file_name": os.path.relpath(rec.image, out.parent), "width": rec.width,
                       "height": rec.height})
        assert rec.boxes is not None and rec.labels is not None
        for j, (b, k) in enumerate(zip(rec.boxes, rec.labels)):
            x0, y0, x1, y1 = (float(v) for v in b)
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": int(k) + 1,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            polys = _polygons(rec.shapes[j]) if rec.shapes is not None else []
            ann["segmentation"] = polys or [[x0, y0, x1, y0, x1, y1, x0, y1]]
            anns.append(ann)
    data = {"info": {"description": f"converted by dvis data convert from {spec.root} ({spec.format})"},
            "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(spec.classes)]}
    with atomic_output(out, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data), encoding="utf-8")
    return {"output": str(out), "images": len(images), "objects": len(anns), "classes": spec.classes}


def to_yolo(spec: DatasetSpec, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``images/`` (hard links or copies), ``labels/*.txt`` (``class cx cy w h``) and
    ``classes.txt``."""
    if spec.task not in ("detect", "instance"):
        raise DatasetError(spec.root, f"YOLO output holds boxes; this is a {spec.task} dataset")
    if any(r.region is not None for r in spec.records):
        raise DatasetError(spec.root, "geo datasets convert to YOLO through their chips: not supported yet")
    objects = 0
    with atomic_output(out, overwrite=overwrite, directory=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for rec, name in zip(spec.records, _unique_names(spec)):
            _place(rec.image, tmp / "images" / name)
            assert rec.boxes is not None and rec.labels is not None
            lines = []
            for (x0, y0, x1, y1), k in zip(rec.boxes, rec.labels):
                lines.append(f"{int(k)} {(x0 + x1) / 2 / rec.width:.6f} {(y0 + y1) / 2 / rec.height:.6f} "
                             f"{(x1 - x0) / rec.width:.6f} {(y1 - y0) / rec.height:.6f}")
            objects += len(lines)
            (tmp / "labels" / f"{Path(name).stem}.txt").write_text("".join(ln + "\n" for ln in lines))
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in spec.classes), encoding="utf-8")
    return {"output": str(out), "images": len(spec.records), "objects": objects, "classes": spec.classes}


def to_index_masks(spec: DatasetSpec, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``images/`` (hard links or copies), ``masks/*.png`` (class indexes, 255 = ignore)
    and ``classes.txt`` from a segmentation set (colour masks through its palette)."""
    if spec.task != "segment" or spec.coding is None:
        raise DatasetError(spec.root, "index masks come from a segmentation dataset (image/mask pairs)")
    counts = np.zeros(256, dtype=np.int64)
    with atomic_output(out, overwrite=overwrite, directory=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for rec, name in zip(spec.records, _unique_names(spec)):
            if rec.mask is None:
                raise DatasetError(rec.image, "no mask file to convert")
            _place(rec.image, tmp / "images" / name)
            mask = read_label(rec.mask, (0, 0, rec.width, rec.height), spec.coding)
            counts += np.bincount(mask.reshape(-1), minlength=256)
            Image.fromarray(mask, mode="L").save(tmp / "masks" / f"{Path(name).stem}.png")
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in spec.classes), encoding="utf-8")
    return {"output": str(out), "images": len(spec.records), "classes": spec.classes,
            "pixels_per_class": {c: int(counts[i]) for i, c in enumerate(spec.classes)},
            "pixels_ignored": int(counts[255])}


def summarise(spec: DatasetSpec) -> dict[str, Any]:
    """Counts of a dataset for ``dvis data check``."""
    out: dict[str, Any] = {"data": str(spec.root), "format": spec.format, "task": spec.task,
                           "classes": spec.classes, "images": len(spec.records), "bands": spec.bands}
    if spec.task == "classify":
        per = np.bincount([r.label or 0 for r in spec.records], minlength=len(spec.classes))
        out["images_per_class"] = {c: int(per[i]) for i, c in enumerate(spec.classes)}
    if spec.task in ("detect", "instance"):
        labels = np.concatenate([r.labels for r in spec.records if r.labels is not None]
                                or [np.zeros(0, int)])
        per = np.bincount(labels.astype(np.int64), minlength=len(spec.classes))
        out["objects_per_class"] = {c: int(per[i]) for i, c in enumerate(spec.classes)}
        out["images_without_objects"] = sum(1 for r in spec.records
                                            if r.labels is not None and len(r.labels) == 0)
    if spec.format == "geo":
        out["chips"] = len(spec.records)
        out["scenes"] = len({str(r.image) for r in spec.records})
    return out
