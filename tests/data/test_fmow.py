"""The fMoW-style format: images with ``<stem>.json`` (``bounding_boxes``: ``box`` [x, y, w, h] +
``category``) beside them, written in tmp_path from real NWPU VHR-10 images and their boxes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynamicvis_cli.data import fmow
from dynamicvis_cli.data.discover import detect_format, open_dataset
from dynamicvis_cli.data.nwpu import NWPU_CLASSES, parse_nwpu_txt
from dynamicvis_cli.errors import DatasetError
from tests.train.fixtures import shared

pytestmark = pytest.mark.data


def fmow_json(boxes: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """fMoW metadata for NWPU boxes (xyxy → x, y, w, h), with fMoW's other keys around them."""
    return {"gsd": 0.5, "img_width": 0, "country_code": "N/A",
            "bounding_boxes": [{"box": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                "category": NWPU_CLASSES[int(k)], "ID": i}
                               for i, (b, k) in enumerate(zip(boxes, labels))]}


def make_fmow(dest: Path, stems: tuple[str, ...] = ("003", "005", "011"), nested: bool = False) -> Path:
    """ROOT/<stem>_rgb.jpg + .json (or fMoW's tree: ROOT/<category>/<category>_<n>/...)."""
    src = shared("nwpu_vhr10", "train")
    for n, s in enumerate(stems):
        boxes, labels = parse_nwpu_txt(src / "ground_truth" / f"{s}.txt", len(NWPU_CLASSES))
        folder = dest / NWPU_CLASSES[int(labels[0])].replace(" ", "_") / f"site_{n}" if nested else dest
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "images" / f"{s}.jpg", folder / f"{s}_rgb.jpg")
        (folder / f"{s}_rgb.json").write_text(json.dumps(fmow_json(boxes, labels)))
    return dest


@pytest.mark.parametrize("nested", [False, True])
def test_fmow_reads_the_nwpu_boxes(tmp_path: Path, nested: bool) -> None:
    root = make_fmow(tmp_path / "fmow", nested=nested)
    spec = open_dataset(root, "detect")
    assert spec.format == "fmow" and spec.task == "detect"
    nwpu = open_dataset(shared("nwpu_vhr10", "train"), "detect")
    by_stem = {r.image.stem: r for r in nwpu.records}
    assert spec.classes == sorted(spec.classes)  # sorted by name when not given
    assert len(spec.records) == 3
    for rec in spec.records:
        ref = by_stem[rec.image.stem.removesuffix("_rgb")]
        assert (rec.width, rec.height) == (ref.width, ref.height)
        assert rec.boxes is not None and rec.boxes.dtype == np.float64
        assert np.allclose(rec.boxes, ref.boxes)  # type: ignore[arg-type]
        names = [spec.classes[k] for k in rec.labels]  # type: ignore[union-attr]
        assert names == [nwpu.classes[k] for k in ref.labels]  # type: ignore[union-attr]


def test_fmow_given_classes_and_images_without_metadata(tmp_path: Path) -> None:
    root = make_fmow(tmp_path / "fmow")
    shutil.copy(shared("nwpu_vhr10", "train", "images", "009.jpg"), root / "009_rgb.jpg")  # no json
    spec = open_dataset(root, "detect", format="fmow", classes=list(NWPU_CLASSES))
    assert spec.classes == list(NWPU_CLASSES)
    empty = [r for r in spec.records if r.image.name == "009_rgb.jpg"]
    assert len(empty) == 1 and empty[0].boxes.shape == (0, 4)  # type: ignore[union-attr]
    with pytest.raises(DatasetError, match=r"003_rgb\.json: category 'airplane' is not in the class list"):
        open_dataset(root, "detect", classes=["ship", "harbor", "vehicle", "storage tank"])


def test_fmow_is_not_mistaken_and_does_not_steal(tmp_path: Path) -> None:
    one = make_fmow(tmp_path / "one", stems=("003",))  # one image + one .json: not a COCO folder
    assert detect_format(one, "detect") == "fmow"
    assert detect_format(shared("nwpu_vhr10", "train"), "detect") == "nwpu"
    for other in (shared("nwpu_vhr10", "train"), shared("aerial_coco"), shared("ssdd", "train"),
                  shared("dota_harbour")):
        assert not fmow.looks_like(other)


def test_fmow_bad_metadata_names_the_file(tmp_path: Path) -> None:
    root = make_fmow(tmp_path / "fmow")
    meta = root / "005_rgb.json"
    good = meta.read_text()
    meta.write_text(good[:-5])
    with pytest.raises(DatasetError, match=r"005_rgb\.json: not valid JSON"):
        open_dataset(root, "detect", format="fmow")
    data = json.loads(good)
    data["bounding_boxes"][0]["box"][2] = 0
    meta.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"005_rgb\.json: bounding box 1: non-positive .*size"):
        open_dataset(root, "detect")
    data["bounding_boxes"][0]["box"] = [1, 2, 3]
    meta.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"005_rgb\.json: bounding box 1: 'box' is not"):
        open_dataset(root, "detect", format="fmow")
    meta.write_text(good)
    (root / "011_rgb.jpg").unlink()
    with pytest.raises(DatasetError, match=r"011_rgb\.json: boxes for a missing image"):
        open_dataset(root, "detect", format="fmow")
    with pytest.raises(DatasetError, match="no instance labels|boxes only"):
        open_dataset(root, "instance", format="fmow")
