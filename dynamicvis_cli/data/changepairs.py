"""Bi-temporal change pairs in the LEVIR-CD layout: ``A/`` (before), ``B/`` (after), ``label/``.

Files pair by name (the same stem in each folder). Labels are one band: 0 = no change and
255 (or 1) = change for two classes; class indexes with more classes (255 then = ignore).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dynamicvis_cli.data.imagefolder import list_images
from dynamicvis_cli.data.io import check_label, image_header, label_header
from dynamicvis_cli.data.records import DatasetSpec, MaskCoding, Record
from dynamicvis_cli.errors import DatasetError

LABEL_FOLDERS = ("label", "labels", "mask", "masks", "OUT")


def looks_like(root: Path) -> bool:
    return (root / "A").is_dir() and (root / "B").is_dir()


def load_change_pairs(root: Path, *, classes: Sequence[str] | None = None,
                      check_masks: bool = True) -> DatasetSpec:
    """Records for every ``A/<name>`` with ``B/<name>`` and ``label/<name>``.

    Raises:
        DatasetError: missing folders or files, A/B/label sizes that differ, undecodable files
            or label values outside the classes (each names the file).
    """
    a_dir, b_dir = root / "A", root / "B"
    for d in (a_dir, b_dir):
        if not d.is_dir():
            raise DatasetError(d, "change dataset folder missing (layout: A/, B/, label/)")
    label_dir = next((root / n for n in LABEL_FOLDERS if (root / n).is_dir()), None)
    if label_dir is None:
        raise DatasetError(root / "label", "change dataset has no label/ folder")
    names = list(classes) if classes else ["unchanged", "changed"]
    if len(names) < 2:
        names = ["unchanged", *names]
    coding = MaskCoding("binary" if len(names) == 2 else "index", len(names))
    b_files = {p.stem: p for p in list_images(b_dir)}
    l_files = {p.stem: p for p in list_images(label_dir)}
    records, bands = [], 0
    a_files = list_images(a_dir)
    if not a_files:
        raise DatasetError(a_dir, "no images")
    for a in a_files:
        b, lab = b_files.get(a.stem), l_files.get(a.stem)
        if b is None:
            raise DatasetError(a, f"no second date {b_dir / a.stem}.*")
        if lab is None:
            raise DatasetError(a, f"no change label {label_dir / a.stem}.*")
        wa, ha, ca, _ = image_header(a)
        wb, hb, cb, _ = image_header(b)
        if (wa, ha) != (wb, hb):
            raise DatasetError(b, f"second date is {wb}x{hb} px but first date {a.name} is {wa}x{ha}")
        if ca != cb:
            raise DatasetError(b, f"second date has {cb} band(s) but first date {a.name} has {ca}")
        wl, hl, _ = label_header(lab)
        if (wl, hl) != (wa, ha):
            raise DatasetError(lab, f"label is {wl}x{hl} px but its images are {wa}x{ha}")
        if check_masks:
            check_label(lab, coding)
        bands = bands or ca
        records.append(Record(a, wa, ha, image_b=b, mask=lab, count=ca))
    return DatasetSpec(root, "change-pairs", "change", names, records, coding=coding, bands=bands)
