"""Small real training sets cut from ../shared/data into tmp_path (built, never stored).

Every pixel is real: chips of the Dubai tiles (classification and segmentation), LEVIR-CD pairs
(change), NWPU VHR-10 crops with their boxes (detection) and COCO polygons (instance).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED

DATA = SHARED / "data"
#: The colours the Dubai masks use (dubai/README.md), class order = class index.
DUBAI_PALETTE = {"building": "#3C1098", "land": "#8429F6", "road": "#6EC1E4", "vegetation": "#FEDD3A",
                 "water": "#E2A929", "unlabeled": "#9B9B9B", "ignore": ["#000000"]}
_RGB = {k: tuple(int(v[i:i + 2], 16) for i in (1, 3, 5)) for k, v in DUBAI_PALETTE.items() if k != "ignore"}


def shared(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (needs ../shared/data)")
    return path


def dubai_pure_chips(classes: tuple[str, ...], per_class: int, size: int = 64,
                     purity: float = 0.95) -> dict[str, list[tuple[Path, int, int]]]:
    """Chips (image path, row, col) whose mask is at least ``purity`` one class, spread over tiles."""
    root = shared("dubai")
    found: dict[str, list[tuple[Path, int, int]]] = {c: [] for c in classes}
    for tile in ("Tile 1", "Tile 3", "Tile 6", "Tile 7", "Tile 8"):
        for mask_path in sorted((root / tile / "masks").glob("*.png"))[:3]:
            m = np.asarray(Image.open(mask_path).convert("RGB")).astype(np.int64)
            for r in range(0, m.shape[0] - size, size * 2):
                for c in range(0, m.shape[1] - size, size * 2):
                    block = m[r:r + size, c:c + size]
                    for name in classes:
                        frac = np.all(block == _RGB[name], axis=-1).mean()
                        if frac >= purity and len(found[name]) < per_class:
                            img = root / tile / "images" / f"{mask_path.stem}.jpg"
                            if all(p != img for p, _, _ in found[name]):  # one chip per image
                                found[name].append((img, r, c))
            if all(len(v) >= per_class for v in found.values()):
                return found
    return found


def make_imagefolder(dest: Path, classes: tuple[str, ...] = ("water", "vegetation"), per_class: int = 3,
                     size: int = 64) -> Path:
    """ROOT/<class>/<n>.png chips of real Dubai imagery, labelled by their (pure) mask class."""
    chips = dubai_pure_chips(classes, per_class, size)
    for name, items in chips.items():
        assert len(items) == per_class, f"not enough pure {name} chips"
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i, (img, r, c) in enumerate(items):
            Image.open(img).convert("RGB").crop((c, r, c + size, r + size)).save(dest / name / f"{i}.png")
    return dest


def make_dubai_pairs(dest: Path, n: int = 4, size: int = 64) -> Path:
    """images/ + masks/ (colour masks) chips of the Dubai tiles, centred where classes mix."""
    root = shared("dubai")
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    picks = [("Tile 1", "image_part_002"), ("Tile 3", "image_part_001"), ("Tile 6", "image_part_002"),
             ("Tile 1", "image_part_004"), ("Tile 3", "image_part_003"), ("Tile 6", "image_part_004")][:n]
    for i, (tile, stem) in enumerate(picks):
        img = Image.open(root / tile / "images" / f"{stem}.jpg").convert("RGB")
        mask = Image.open(root / tile / "masks" / f"{stem}.png").convert("RGB")
        m = np.asarray(mask)
        best, where = -1, (0, 0)
        for r in range(0, m.shape[0] - size, size // 2):  # the most mixed window: most classes
            for c in range(0, m.shape[1] - size, size // 2):
                k = len(np.unique(m[r:r + size:4, c:c + size:4].reshape(-1, 3), axis=0))
                if k > best:
                    best, where = k, (r, c)
        r, c = where
        img.crop((c, r, c + size, r + size)).save(dest / "images" / f"chip{i}.png")
        mask.crop((c, r, c + size, r + size)).save(dest / "masks" / f"chip{i}.png")
    return dest


def make_change(dest: Path, names: tuple[str, ...] = ("test_102_0512_0000", "test_121_0768_0256",
                                                       "val_27_0000_0256", "test_55_0256_0000"),
                size: int = 64) -> Path:
    """A/, B/, label/ with the top-left ``size`` px crop of real LEVIR-CD pairs, where the
    change is (the crop is moved onto the changed pixels)."""
    root = shared("change")
    for sub in ("A", "B", "label"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        lab = np.asarray(Image.open(root / "label" / f"{name}.png"))
        rows, cols = np.nonzero(lab)
        r = int(np.clip(rows.mean() - size // 2, 0, lab.shape[0] - size)) if len(rows) else 0
        c = int(np.clip(cols.mean() - size // 2, 0, lab.shape[1] - size)) if len(cols) else 0
        for sub in ("A", "B", "label"):
            crop = Image.open(root / sub / f"{name}.png").crop((c, r, c + size, r + size))
            crop.save(dest / sub / f"{name}.png")
    return dest


def make_coco_crops(dest: Path, n: int = 2, size: int = 128, split: str = "train",
                    distinct: bool = False) -> Path:
    """A COCO file of ``size`` px crops of NWPU VHR-10 images around their objects (polygons cut
    to the crop by keeping objects wholly inside it); ``distinct``: each crop centred on an
    object of a class the earlier crops were not centred on."""
    root = shared("nwpu_vhr10", split)
    data = json.loads((root / f"instances_{split}.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images, anns = [], []
    seen: set[int] = set()
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for im in data["images"]:
        if len(images) == n:
            break
        objs = [a for a in by_image.get(im["id"], []) if max(a["bbox"][2], a["bbox"][3]) <= size * 0.6
                and min(a["bbox"][2], a["bbox"][3]) >= 12]
        if not objs:
            continue
        if distinct:
            objs = [a for a in objs if a["category_id"] not in seen] or []
            if not objs:
                continue
            seen.add(objs[0]["category_id"])
        x0 = int(max(0, min(objs[0]["bbox"][0] - 10, im["width"] - size)))
        y0 = int(max(0, min(objs[0]["bbox"][1] - 10, im["height"] - size)))
        inside = [a for a in objs if a["bbox"][0] >= x0 and a["bbox"][1] >= y0
                  and a["bbox"][0] + a["bbox"][2] <= x0 + size and a["bbox"][1] + a["bbox"][3] <= y0 + size]
        name = f"crop{len(images)}.png"
        img = Image.open(root / "images" / im["file_name"]).convert("RGB")
        img.crop((x0, y0, x0 + size, y0 + size)).save(dest / "images" / name)
        iid = len(images) + 1
        images.append({"id": iid, "file_name": name, "width": size, "height": size})
        for a in inside:
            x, y, w, h = a["bbox"]
            seg = [[v - (x0 if i % 2 == 0 else y0) for i, v in enumerate(p)] for p in a["segmentation"]]
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": a["category_id"],
                         "bbox": [x - x0, y - y0, w, h], "segmentation": seg, "iscrowd": 0,
                         "area": a["area"]})
    (dest / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                      "categories": data["categories"]}))
    return dest / "instances.json"


def make_geo_trees(dest: Path, chip: int = 128) -> Path:
    """A geo dataset YAML: the OSBS_029 GeoTIFF and its tree boxes (pixel csv) written as map
    polygons in a GeoPackage with a class column."""
    import csv

    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    scene = shared("neon_trees", "OSBS_029.tif")
    with rasterio.open(scene) as ds:
        t, crs = ds.transform, ds.crs
    polys = []
    with open(shared("neon_trees", "OSBS_029.csv")) as f:
        for row in csv.DictReader(f):
            x0, y0 = t @ (float(row["xmin"]), float(row["ymin"]))
            x1, y1 = t @ (float(row["xmax"]), float(row["ymax"]))
            polys.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    dest.mkdir(parents=True, exist_ok=True)
    gpd.GeoDataFrame({"kind": ["tree"] * len(polys)}, geometry=polys, crs=crs).to_file(dest / "trees.gpkg")
    (dest / "geo.yaml").write_text(f"scenes: [{scene}]\nlabels: trees.gpkg\nclass_column: kind\n"
                                   f"chip_size: {chip}\n")
    return dest / "geo.yaml"
