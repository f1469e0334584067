"""scripts/prepare_release_data.py and benchmarks/make_landcover_chips.py on the real shared data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.windows import Window

from dynamicvis_cli.data.discover import open_dataset
from tests.scripts.conftest import DATA, REPO, load_script
from tests.scripts.conftest import run_script as _run


def test_release_data_splits_and_class_names(release_data: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, r = release_data
    assert r.returncode == 0, r.stderr
    trees = open_dataset(out / "trees" / "train", "detect", format="voc")
    assert trees.classes == ["Tree"]  # SOAP's Alive/Dead mapped
    assert sum(len(rec.boxes) for rec in trees.records) == 37 + 279 + 32  # + OSBS_029's northern crowns
    (osbs_test,) = open_dataset(out / "trees" / "test", "detect", format="voc").records
    assert osbs_test.image.name == "OSBS_029_y200-400.tif" and len(osbs_test.boxes) == 29  # 32 + 29 = 61
    assert (osbs_test.boxes[:, [1, 3]] >= 0).all() and (osbs_test.boxes[:, [1, 3]] <= 200).all()
    with rasterio.open(DATA / "neon_trees" / "OSBS_029.tif") as whole, rasterio.open(osbs_test.image) as half:
        assert half.crs == whole.crs and half.shape == (200, 400)
        assert half.transform == whole.transform @ Affine.translation(0, 200)  # on the scene's grid
        assert (half.read() == whole.read(window=Window(0, 200, 400, 200))).all()
    (select,) = open_dataset(out / "trees" / "select", "detect", format="voc").records  # SJER, csv → VOC
    assert select.image.name.startswith("2018_SJER") and len(select.boxes) == 7
    assert select.boxes[0].tolist() == [1, 103, 82, 235]  # csv columns xmin,xmax,ymin,ymax reordered
    train = open_dataset(out / "dota" / "train", "detect", format="dota")
    test = open_dataset(out / "dota" / "test", "detect", format="dota")
    assert train.classes == ["harbor", "ship", "vehicle"]
    n_ship = {s: sum(int((rec.labels == spec.classes.index("ship")).sum()) for rec in spec.records)
              for s, spec in (("train", train), ("test", test))}
    assert n_ship["train"] + n_ship["test"] == 297 and min(n_ship.values()) > 50  # every ship, once
    (rec,) = test.records
    assert rec.width == 1111 - 740 and (rec.boxes[:, [0, 2]] >= 0).all() and (rec.boxes[:, 2] <= rec.width).all()
    # the ten-class detector's COCO files: NWPU train + DOTA train; NWPU val; the held-out marina
    coco = {s: open_dataset(out / "detect" / f"{s}.json", "detect") for s in ("train", "val", "marina")}
    nwpu = {s: open_dataset(DATA / "nwpu_vhr10" / s, "detect", format="nwpu") for s in ("train", "val")}
    assert all(c.classes == nwpu["train"].classes for c in coco.values()) and len(coco["train"].classes) == 10
    assert len(coco["train"].records) == len(nwpu["train"].records) + 2
    boxes = {s: sum(len(r.boxes) for r in c.records) for s, c in coco.items()}
    assert boxes["train"] == sum(len(r.boxes) for r in nwpu["train"].records + train.records)
    assert boxes["val"] == sum(len(r.boxes) for r in nwpu["val"].records)
    assert boxes["marina"] == len(rec.boxes)
    ship = coco["train"].classes.index("ship")
    marina_ships = sum(int((r.labels == ship).sum()) for r in coco["marina"].records)
    assert marina_ships == n_ship["test"]
    balanced = open_dataset(out / "detect" / "train-balanced.json", "detect")
    assert len(balanced.records) == len(coco["train"].records) + 19 + 4  # marina x20, P1888 x5
    held_out = {r.image.resolve() for r in coco["val"].records + coco["marina"].records}
    assert not held_out & {r.image.resolve() for r in coco["train"].records}
    # the change detector's pairs: real training pairs x4 + Dubai pseudo-pairs (+ copy-paste pairs);
    # the selection pair and the held-out pairs apart
    change = {s: open_dataset(out / "change" / s, "change")
              for s in ("train", "train-paste", "levir-select", "levir-test", "dsifn-test", "dubai-test")}
    assert {s: len(c.records) for s, c in change.items()} == {
        "train": 5 * 4 + 6 * 4 + 48, "train-paste": 5 * 4 + 6 * 4 + 48 + 48,
        "levir-select": 1, "levir-test": 3, "dsifn-test": 2, "dubai-test": 16}
    stems = {s: {r.image.stem.rsplit("_r", 1)[0] for r in c.records} for s, c in change.items()}
    assert stems["levir-select"] == {"levir_val_27_0000_0256"}
    assert not (stems["train"] | stems["train-paste"]) & (stems["levir-select"] | stems["levir-test"] | stems["dsifn-test"])
    pseudo = [np.asarray(Image.open(r.mask)) for r in change["train"].records if r.image.stem.startswith("dubai_")]
    assert all(set(np.unique(m)) <= {0, 255} for m in pseudo)
    changed = [float((m > 0).mean()) for m in pseudo]
    assert min(changed) == 0.0 and 0.05 < float(np.mean(changed)) < 0.5  # some no-change pairs, most changed
    # train-paste: train plus building copy-paste pairs
    real = {r.image.stem for r in change["train-paste"].records if not r.image.stem.startswith("levir_paste_")}
    assert real == {r.image.stem for r in change["train"].records}
    pasted = [r for r in change["train-paste"].records if r.image.stem.startswith("levir_paste_")]
    assert len(pasted) == 48
    pure = 0  # pairs whose second date is the first again (plus a colour shift) and the pastes
    for r in pasted:
        before, after = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (r.image, r.image_b))
        mask = np.asarray(Image.open(r.mask))
        label = mask > 0
        assert label.any() and set(np.unique(mask)) <= {0, 255}
        diff = np.abs(after - before).sum(-1)
        if diff[~label].mean() < 45:  # unchanged pixels kept: the pasted buildings are what differs
            pure += 1
            assert diff[label].mean() > 2 * diff[~label].mean()
    assert 12 <= pure <= 36  # about half the pairs
    levir_select_a = np.asarray(Image.open(DATA / "change" / "A" / "val_27_0000_0256.png").convert("RGB"))
    assert not any((np.asarray(Image.open(r.image).convert("RGB")) == levir_select_a).all() for r in pasted)
    # the pasted buildings come only from the LEVIR pairs trained on, never the selection/held-out ones
    prep = load_script("scripts/prepare_release_data.py")
    sources = [name for name, _ in prep.levir_training_pairs(DATA)]
    assert sources == sorted({s.removeprefix("levir_") for s in stems["train"] if s.startswith("levir_")})
    assert len(sources) == 5 and "val_27_0000_0256" not in sources
    again = _run("scripts/prepare_release_data.py", "--out", out)
    assert again.returncode == 2 and "exists" in again.stderr
    inside = _run("scripts/prepare_release_data.py", "--out", REPO / "release-data")
    assert inside.returncode == 2 and not (REPO / "release-data").exists()


@pytest.mark.skipif(not (DATA / "dubai").is_dir(), reason="needs ../shared/data/dubai")
def test_landcover_chips_selection_split(tmp_path: Path) -> None:
    data = tmp_path / "dubai"  # one image of a training tile and one of Tile 8 (the script reads each whole)
    for tile in ("Tile 1", "Tile 8"):
        image = min((DATA / "dubai" / tile / "images").glob("*.jpg"))
        for sub, src in (("images", image), ("masks", image.parent.parent / "masks" / f"{image.stem}.png")):
            (data / tile / sub).mkdir(parents=True, exist_ok=True)
            (data / tile / sub / src.name).symlink_to(src)
    out = tmp_path / "chips"
    r = _run("benchmarks/make_landcover_chips.py", "--data", data, "--out", out, "--chip", 128,
             "--split", "Tile 8=select")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["select", "train"]
    assert all(p.name.startswith("Tile8_") for p in (out / "select").rglob("*.png"))
    assert not any(p.name.startswith("Tile8_") for p in (out / "train").rglob("*.png"))
    bad = _run("benchmarks/make_landcover_chips.py", "--out", tmp_path / "x", "--split", "Tile 9=a")
    assert bad.returncode == 2 and "TILE=SPLIT" in bad.stderr
