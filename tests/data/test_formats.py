"""Dataset formats on the real sets in ../shared/data, and the up-front errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamicvis_cli.data.coco import decode_rle, rle_counts
from dynamicvis_cli.data.discover import detect_format, open_dataset
from dynamicvis_cli.errors import DatasetError, DvisUsageError
from tests.train.fixtures import DUBAI_PALETTE, make_change, make_coco_crops, make_imagefolder, shared


def test_imagefolder_classes_from_folders_and_errors(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=2)
    spec = open_dataset(root, "classify")
    assert spec.format == "imagefolder" and spec.classes == ["vegetation", "water"]
    assert [r.label for r in spec.records] == [0, 0, 1, 1] and spec.records[0].width == 64
    with pytest.raises(DatasetError, match="class folder 'water' is not in the class list"):
        open_dataset(root, "classify", classes=["vegetation"])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class folders|no images|no classify dataset layout"):
        open_dataset(tmp_path / "empty", "classify", format="imagefolder")


def test_an_image_that_fails_to_decode_is_named_up_front(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=1)
    bad = root / "water" / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG at all" * 10)
    with pytest.raises(DatasetError) as exc:
        open_dataset(root, "classify")
    assert str(bad) in str(exc.value) and "cannot be decoded" in str(exc.value)


def test_dubai_colour_masks_rgb_and_palette_png() -> None:
    spec = open_dataset(shared("dubai"), "segment", palette=DUBAI_PALETTE)
    assert spec.format == "masks" and len(spec.records) == 63
    assert spec.classes == ["building", "land", "road", "vegetation", "water", "unlabeled"]
    from dynamicvis_cli.data.io import read_label

    assert spec.coding is not None
    tile2 = next(r for r in spec.records if "Tile 2" in str(r.mask))  # a palette-mode PNG
    lab = read_label(tile2.mask, (0, 0, tile2.width, tile2.height), spec.coding)  # type: ignore[arg-type]
    assert set(np.unique(lab)) <= {0, 1, 2, 3, 4, 5, 255} and lab.shape == (tile2.height, tile2.width)


def test_unknown_mask_colour_and_index_outside_the_classes(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[5, 5] = 7
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetError) as exc:
        open_dataset(tmp_path, "segment", classes=["x", "y", "z"])
    assert "masks/a.png" in str(exc.value) and "class index 7 outside the class list" in str(exc.value)
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetError, match="colour #090909 is not in the palette"):
        open_dataset(tmp_path, "segment", palette={"black": "#000000"})
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(DatasetError, match="images/a.png: image has no mask"):
        open_dataset(tmp_path, "segment", classes=["x"])


def test_change_pairs_and_mismatched_sizes(tmp_path: Path) -> None:
    spec = open_dataset(shared("change"), "change")
    assert spec.format == "change-pairs" and len(spec.records) == 9
    assert spec.classes == ["unchanged", "changed"]
    root = make_change(tmp_path / "pairs", names=("test_102_0512_0000", "test_55_0256_0000"))
    b = root / "B" / "test_55_0256_0000.png"
    Image.open(b).crop((0, 0, 48, 64)).save(b)
    with pytest.raises(DatasetError) as exc:
        open_dataset(root, "change")
    assert str(b) in str(exc.value) and "48x64" in str(exc.value) and "64x64" in str(exc.value)
    b.unlink()
    with pytest.raises(DatasetError, match="no second date"):
        open_dataset(root, "change")


def test_nwpu_txt_boxes() -> None:
    root = shared("nwpu_vhr10", "train")
    assert detect_format(root, "detect") == "nwpu"
    spec = open_dataset(root, "detect")
    assert len(spec.records) == 179 and sum(len(r.boxes) for r in spec.records) == 1147
    assert spec.classes[0] == "airplane" and spec.classes[-1] == "vehicle"
    with pytest.raises(DatasetError, match="format 'nwpu' has no instance labels"):
        open_dataset(root, "instance", format="nwpu")
    from dynamicvis_cli.data.nwpu import load_nwpu

    with pytest.raises(DatasetError, match="boxes only"):
        load_nwpu(root, task="instance")


def test_nwpu_bad_lines_and_orphan_labels(tmp_path: Path) -> None:
    src = shared("nwpu_vhr10", "train")
    (tmp_path / "images").mkdir()
    (tmp_path / "ground_truth").mkdir()
    shutil.copy(src / "images" / "003.jpg", tmp_path / "images")
    (tmp_path / "ground_truth" / "003.txt").write_text("(100,256),(170,319),11\n")
    with pytest.raises(DatasetError, match=r"003.txt: line 1: class id 11 outside the class list"):
        open_dataset(tmp_path, "detect")
    (tmp_path / "ground_truth" / "003.txt").write_text("( 70,119),(161,144),2 \n")
    (tmp_path / "ground_truth" / "999.txt").write_text("(1,1),(5,5),1\n")
    with pytest.raises(DatasetError, match=r"999.txt: boxes for a missing image"):
        open_dataset(tmp_path, "detect")
    (tmp_path / "ground_truth" / "999.txt").unlink()
    spec = open_dataset(tmp_path, "detect")
    assert spec.records[0].boxes.tolist() == [[70, 119, 161, 144]]
    assert spec.records[0].labels.tolist() == [1]


def test_coco_polygons_and_missing_images(tmp_path: Path) -> None:
    spec = open_dataset(shared("nwpu_vhr10", "train", "instances_train.json"), "instance")
    assert len(spec.records) == 179 and spec.classes[2] == "storage_tank"
    assert sum(len(r.shapes) for r in spec.records) == sum(len(r.boxes) for r in spec.records)
    coco = make_coco_crops(tmp_path / "coco", n=2, size=96)
    data = json.loads(coco.read_text())
    data["images"][1]["file_name"] = "nowhere.png"
    coco.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as exc:
        open_dataset(coco, "detect")
    assert str(coco) in str(exc.value) and "'nowhere.png'" in str(exc.value)
    data["images"][1]["file_name"] = "crop1.png"
    data["annotations"][0]["category_id"] = 42
    coco.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="category_id 42, outside the categories"):
        open_dataset(coco, "detect")


def test_aerial_coco_file_loads() -> None:
    spec = open_dataset(shared("aerial_coco", "terrain1_coco.json"), "detect")
    assert spec.classes and len(spec.records) == 1 and len(spec.records[0].boxes) == 7


def test_coco_rle_matches_its_uncompressed_form() -> None:
    mask = np.zeros((5, 4), dtype=bool)
    mask[1:4, 1:3] = True
    flat = mask.T.reshape(-1)  # column-major runs, starting with zeros
    runs, value, n = [], False, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    assert (decode_rle({"size": [5, 4], "counts": runs}) == mask).all()
    # the compressed string form (pycocotools' rleToString, written out here as the reference)
    def encode(counts: list[int]) -> str:
        out = []
        for i, x in enumerate(counts):
            x = x - counts[i - 2] if i > 2 else x
            more = True
            while more:
                c = x & 0x1F
                x >>= 5
                more = (x != -1) if c & 0x10 else (x != 0)
                out.append(chr((c | 0x20 if more else c) + 48))
        return "".join(out)

    assert (decode_rle({"size": [5, 4], "counts": encode(runs)}) == mask).all()
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5000, size=40).tolist()
    assert rle_counts(encode(counts)) == counts


def test_yolo_labels(tmp_path: Path) -> None:
    src = shared("nwpu_vhr10", "train")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    shutil.copy(src / "images" / "003.jpg", tmp_path / "images")
    w, h = Image.open(src / "images" / "003.jpg").size
    (tmp_path / "labels" / "003.txt").write_text(f"0 {135 / w} {287.5 / h} {70 / w} {63 / h}\n"
                                                 f"1 {10 / w} {10 / h} {50 / w} {10 / h} {50 / w} {40 / h}\n")
    (tmp_path / "classes.txt").write_text("airplane\nship\n")
    spec = open_dataset(tmp_path, "instance")
    assert spec.format == "yolo" and spec.classes == ["airplane", "ship"]
    assert np.allclose(spec.records[0].boxes, [[100, 256, 170, 319], [10, 10, 50, 40]])
    (tmp_path / "labels" / "003.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"003.txt: line 1: class index 5 outside the class list"):
        open_dataset(tmp_path, "detect")
    (tmp_path / "labels" / "004.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"004.txt: labels for a missing image"):
        open_dataset(tmp_path, "detect")


def test_empty_dataset_folder_and_wrong_format_for_task(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no segment dataset layout"):
        open_dataset(tmp_path, "segment")
    with pytest.raises(DatasetError, match="dataset does not exist"):
        open_dataset(tmp_path / "missing", "detect")
    with pytest.raises(DatasetError, match="format 'imagefolder' has no detect labels"):
        open_dataset(tmp_path, "detect", format="imagefolder")
    assert issubclass(DatasetError, DvisUsageError)


def test_voc_xml_of_the_neon_trees() -> None:
    spec = open_dataset(shared("neon_trees"), "detect")
    assert spec.format == "voc" and spec.classes == ["Alive", "Dead", "Tree"]
    assert sorted(len(r.boxes) for r in spec.records) == [37, 61, 279]  # type: ignore[arg-type]
    soap = next(r for r in spec.records if r.image.name == "SOAP_061.png")
    assert soap.boxes[0].tolist() == [149, 105, 173, 129] and spec.classes[soap.labels[0]] == "Dead"


def test_voc_missing_image_and_unknown_class(tmp_path: Path) -> None:
    shutil.copy(shared("neon_trees", "SOAP_061.xml"), tmp_path / "SOAP_061.xml")
    with pytest.raises(DatasetError, match="SOAP_061.xml: annotations for a missing image"):
        open_dataset(tmp_path, "detect")
    shutil.copy(shared("neon_trees", "SOAP_061.png"), tmp_path / "SOAP_061.png")
    with pytest.raises(DatasetError, match="SOAP_061.xml: class 'Alive' is not in the class list"):
        open_dataset(tmp_path, "detect", classes=["Dead"])


def test_dota_oriented_boxes_become_boxes_and_polygons() -> None:
    spec = open_dataset(shared("dota_harbour"), "instance")
    assert spec.format == "dota" and spec.classes == ["harbor", "large-vehicle", "ship", "small-vehicle"]
    assert [len(r.boxes) for r in spec.records] == [300, 64]  # type: ignore[arg-type]
    p1888 = spec.records[1]
    poly = p1888.shapes[0][0]  # type: ignore[index]
    assert poly.tolist() == [[674, 375], [683, 375], [684, 394], [675, 395]]
    assert p1888.boxes[0].tolist() == [674, 375, 684, 395]  # type: ignore[index]
