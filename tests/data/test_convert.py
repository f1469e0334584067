"""``dvis data convert``: NWPU VHR-10 txt → COCO and YOLO, Dubai colour masks → index masks; the
converted sets read back to the same labels."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynamicvis_cli.data.convert import to_coco, to_index_masks, to_yolo
from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.data.io import read_label
from dynamicvis_cli.errors import OutputExistsError
from tests.train.fixtures import DUBAI_PALETTE, make_dubai_pairs, shared


def nwpu_subset(dest: Path, stems: tuple[str, ...] = ("003", "005", "009")) -> Path:
    src = shared("nwpu_vhr10", "train")
    (dest / "images").mkdir(parents=True)
    (dest / "ground_truth").mkdir()
    for s in stems:
        shutil.copy(src / "images" / f"{s}.jpg", dest / "images")
        shutil.copy(src / "ground_truth" / f"{s}.txt", dest / "ground_truth")
    return dest


def test_nwpu_to_coco_and_yolo_round_trip(tmp_path: Path) -> None:
    nwpu = open_dataset(nwpu_subset(tmp_path / "nwpu"), "detect")
    to_coco(nwpu, tmp_path / "out" / "coco.json")
    coco = open_dataset(tmp_path / "out" / "coco.json", "detect")
    to_yolo(nwpu, tmp_path / "yolo")
    yolo = open_dataset(tmp_path / "yolo", "detect")
    assert coco.classes == yolo.classes == nwpu.classes
    for a, b, c in zip(nwpu.records, coco.records, yolo.records):
        assert a.image.name == b.image.name == c.image.name
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
        assert np.allclose(a.boxes, c.boxes, atol=0.01) and np.array_equal(a.labels, c.labels)
    with pytest.raises(OutputExistsError):
        to_yolo(nwpu, tmp_path / "yolo")


def test_colour_masks_to_index_masks(tmp_path: Path) -> None:
    spec = open_dataset(make_dubai_pairs(tmp_path / "dubai", n=2), "segment", palette=DUBAI_PALETTE)
    result = to_index_masks(spec, tmp_path / "index")
    names = (tmp_path / "index" / "classes.txt").read_text().splitlines()
    again = open_dataset(tmp_path / "index", "segment", classes=names)
    assert again.classes == spec.classes and result["images"] == 2
    for a, b in zip(spec.records, again.records):
        la = read_label(a.mask, (0, 0, a.width, a.height), spec.coding)  # type: ignore[arg-type]
        lb = read_label(b.mask, (0, 0, b.width, b.height), again.coding)  # type: ignore[arg-type]
        assert np.array_equal(la, lb)


def test_data_check_and_convert_commands(tmp_path: Path) -> None:
    from dynamicvis_cli.cli.app import main

    def cli(*args: object) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
        return code, out.getvalue(), err.getvalue()

    root = nwpu_subset(tmp_path / "nwpu")
    code, out, err = cli("data", "check", root, "--task", "detect")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["format"] == "nwpu" and summary["images"] == 3
    assert sum(summary["objects_per_class"].values()) > 0
    code, out, err = cli("data", "convert", root, "--to", "yolo", "-o", tmp_path / "y")
    assert code == 0 and json.loads(out)["from"] == "nwpu", err
    (root / "ground_truth" / "003.txt").write_text("(1,2),(3,4),12\n")
    code, _, err = cli("data", "check", root, "--task", "detect")
    assert code == 2 and "003.txt: line 1: class id 12" in err
