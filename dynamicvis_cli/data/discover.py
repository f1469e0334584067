"""Find a dataset's format from its layout and load its records (checked up front)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dynamicvis_cli.data import changepairs, fmow, imagefolder, masks, nwpu, vocdota, yolo
from dynamicvis_cli.data.records import DatasetSpec
from dynamicvis_cli.errors import DatasetError

FORMATS = ("auto", "imagefolder", "masks", "change-pairs", "coco", "yolo", "nwpu", "voc", "dota", "fmow",
           "geo")

#: Formats each task can read; ``auto`` tries them in this order (fmow before coco: a folder of
#: one image and its fMoW .json would otherwise pass for a COCO folder).
TASK_FORMATS = {
    "classify": ("imagefolder",),
    "segment": ("masks", "geo"),
    "change": ("change-pairs",),
    "detect": ("nwpu", "yolo", "voc", "dota", "fmow", "coco", "geo"),
    "instance": ("coco", "yolo", "dota", "geo"),
}
#: Region classification reads the detection formats: every labelled box is one sample.
TASK_FORMATS["region"] = TASK_FORMATS["detect"]


def _coco_json(path: Path) -> Path | None:
    if path.is_file() and path.suffix.lower() == ".json":
        return path
    if path.is_dir():
        found = (sorted(path.glob("instances*.json")) or sorted(path.glob("*coco*.json"))
                 or sorted(path.glob("*.json")))
        if len(found) == 1 or (found and found[0].name.startswith("instances")):
            return found[0]
    return None


def detect_format(path: Path, task: str) -> str:
    """The format of ``path`` for ``task``, from its layout.

    Raises:
        DatasetError: the path does not exist or no known layout for the task fits.
    """
    if not path.exists():
        raise DatasetError(path, "dataset does not exist")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        if path.suffix.lower() in (".yaml", ".yml"):
            return "geo"
        raise DatasetError(path, "a dataset is a folder, a COCO .json or a geo dataset .yaml")
    checks = {
        "change-pairs": changepairs.looks_like,
        "nwpu": nwpu.looks_like,
        "yolo": yolo.looks_like,
        "voc": vocdota.looks_like_voc,
        "dota": vocdota.looks_like_dota,
        "fmow": fmow.looks_like,
        "coco": lambda p: _coco_json(p) is not None,
        "masks": masks.looks_like,
        "imagefolder": imagefolder.looks_like,
    }
    for fmt in TASK_FORMATS[task]:
        if fmt in checks and checks[fmt](path):
            return fmt
    raise DatasetError(path, f"no {task} dataset layout found here; {task} reads "
                       f"{', '.join(TASK_FORMATS[task])} (see docs/finetune.md)")


def open_dataset(
    path: str | Path,
    task: str,
    *,
    format: str = "auto",
    classes: Sequence[str] | None = None,
    palette: str | Path | Mapping[str, Any] | None = None,
    image_root: str | Path | None = None,
    check_masks: bool = True,
    geo: Mapping[str, Any] | None = None,
) -> DatasetSpec:
    """Load the records of the dataset at ``path`` for ``task``.

    Args:
        path: a folder, a COCO .json, or a geo dataset .yaml.
        task: classify, segment, change, detect or instance.
        format: one of :data:`FORMATS`; ``auto`` detects it.
        classes: class names (order = output order); default from the dataset.
        palette: colour → class table for colour masks (segment).
        image_root: where a COCO file's images are.
        check_masks: decode every label raster up front.
        geo: options of the ``geo`` format (see :mod:`dynamicvis_cli.data.geovector`).

    Raises:
        DatasetError: anything wrong with the data, naming the file (before any training).
    """
    path = Path(path)
    if task not in TASK_FORMATS:
        raise DatasetError(path, f"unknown task '{task}'")
    if task == "region":  # the boxes of a detection dataset, each box classified
        spec = open_dataset(path, "detect", format=format, classes=classes, image_root=image_root, geo=geo)
        spec.task = "region"
        return spec
    fmt = detect_format(path, task) if format == "auto" else format
    if fmt not in FORMATS:
        raise DatasetError(path, f"unknown dataset format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt not in TASK_FORMATS[task]:
        raise DatasetError(path, f"format '{fmt}' has no {task} labels; {task} reads "
                           f"{', '.join(TASK_FORMATS[task])}")
    if not path.exists():
        raise DatasetError(path, "dataset does not exist")
    if fmt == "imagefolder":
        return imagefolder.load_imagefolder(path, classes)
    if fmt == "masks":
        return masks.load_mask_pairs(path, classes=classes, palette=palette, check_masks=check_masks)
    if fmt == "change-pairs":
        return changepairs.load_change_pairs(path, classes=classes, check_masks=check_masks)
    if fmt == "coco":
        from dynamicvis_cli.data.coco import load_coco

        json_path = _coco_json(path)
        if json_path is None:
            raise DatasetError(path, "no COCO .json found (give the file itself)")
        return load_coco(json_path, task=task, classes=classes,
                         image_root=Path(image_root) if image_root else None)
    if fmt == "yolo":
        return yolo.load_yolo(path, task=task, classes=classes)
    if fmt == "nwpu":
        return nwpu.load_nwpu(path, task=task, classes=classes)
    if fmt == "fmow":
        return fmow.load_fmow(path, task=task, classes=classes)
    if fmt in ("voc", "dota"):
        return vocdota.load_voc_dota(path, fmt, task=task, classes=classes)
    from dynamicvis_cli.data.geovector import load_geo

    return load_geo(path, task=task, classes=classes, options=geo)
