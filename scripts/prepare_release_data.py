"""Training/validation folders for the released models, rebuilt from ../shared/data.

The shared sets are kept exactly as shipped; a few need their splits separated or their class
names unified before ``dvis finetune`` / ``dvis pretrain`` read them. This script writes those
folders (images are symbolic links, annotation files are rewritten copies), so every released
model's training command can be repeated:

- ``OUT/trees/train``: NEON ``SOAP_061`` and ``2019_YELL_2_…_image_crop`` (Pascal VOC); SOAP's
  ``Alive``/``Dead`` crowns become ``Tree`` (the class of every other NEON file);
- ``OUT/trees/train`` also holds the northern half (rows < ``OSBS_SPLIT_Y``) of ``OSBS_029.tif``
  and ``OUT/trees/test`` its southern half, held out: a spatial split of the only Florida scene
  (the two training images are a Yellowstone conifer stand and Sierra snags, no model taught by
  them alone found OSBS's crowns). Both halves are GeoTIFFs on the scene's own grid (EPSG:32617,
  the window's transform); crowns go to the half holding their centre, clipped to it;
- ``OUT/trees/select``: the other georeferenced tile, ``2018_SJER_…_image_477.tif`` (EPSG:32611),
  with a VOC file written from its truth csv: the tree runs' model-selection set;
- ``OUT/dota/train``: the western part (x < 740) of the DOTA marina ``P0706_north`` and the
  vehicle scene ``P1888``; ``OUT/dota/test``: the eastern part (x >= 740) of ``P0706_north``, a
  marina region kept out of training and model selection (a spatial split of the only marina).
  Objects go to the side holding their centre, their corners clipped to it. DOTA names are mapped
  to NWPU VHR-10's (``small-vehicle``/``large-vehicle`` → ``vehicle``); oriented boxes stay
  oriented in the DOTA file (the reader takes their axis-aligned hull);
- ``OUT/detect/train.json``: COCO file of NWPU VHR-10 ``train/`` plus ``OUT/dota/train`` (the ten
  NWPU class names; DOTA's oriented boxes as their axis-aligned hulls); ``OUT/detect/val.json``:
  NWPU ``val/`` (model selection); ``OUT/detect/marina.json``: ``OUT/dota/test`` (held out);
  ``OUT/detect/train-balanced.json``: as ``train.json`` with the DOTA images listed several times
  (``DOTA_REPEAT``), so that the one training marina is not 1 crop in 181;
- ``OUT/change/train`` (A/, B/, label/): the training pairs of LEVIR-CD (``change/``) and DSIFN-CD
  (``change_dsifn/``) but the LEVIR-CD pair kept for model selection (``OUT/change/levir-select``,
  ``CHANGE_SELECT``), each listed ``CHANGE_REPEAT`` times, plus ``PSEUDO_PAIRS`` pseudo-pairs made
  from the Dubai land-cover training tiles (see :func:`pseudo_pair`); ``OUT/change/train-paste``:
  the same plus ``LEVIR_PASTE_PAIRS`` building copy-paste pairs made from the LEVIR-CD training
  pairs (see :func:`building_paste_pair`; the released change detector's data, ``train`` its
  control run's); ``OUT/change/levir-test``, ``OUT/change/dsifn-test``: the two sets' held-out
  pairs (their READMEs' val split); ``OUT/change/dubai-test``: pseudo-pairs from Dubai Tile 6
  (held out from every land-cover model).

Usage::

    python scripts/prepare_release_data.py --out /tmp/release-data

The output folder must be outside the repository; an existing one is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import shutil
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import rasterio
from numpy.typing import NDArray
from PIL import Image
from rasterio.windows import Window
from scipy import ndimage

from dynamicvis_cli.errors import DvisError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"

TREE_NAMES = {"Alive": "Tree", "Dead": "Tree"}
DOTA_NAMES = {"small-vehicle": "vehicle", "large-vehicle": "vehicle"}
TREES = {"train": ["SOAP_061.png", "2019_YELL_2_541000_4977000_image_crop.png"]}
OSBS = "OSBS_029.tif"
OSBS_SPLIT_Y = 200  # OSBS_029: rows above this train, the rest test (32 and 29 crowns)
TREES_SELECT = "2018_SJER_3_252000_4107000_image_477.tif"  # its boxes: <stem>_truth.csv
DOTA_SPLIT_X = 740  # P0706_north: columns left of this train, the rest test
DOTA_REPEAT = {"P0706_north_x0-740.png": 20, "P1888.png": 5}  # times listed in train-balanced.json
CHANGE_TEST = {"change": ("test_2_0000_0000", "test_77_0512_0256", "test_7_0256_0512"),  # the READMEs' val
               "change_dsifn": ("1_1", "5_3")}
CHANGE_SELECT = {"change": ("val_27_0000_0256",)}  # LEVIR-CD's val-split sample: model selection
CHANGE_PREFIX = {"change": "levir", "change_dsifn": "dsifn"}
CHANGE_REPEAT = 4  # each real training pair listed this many times beside the pseudo-pairs
PSEUDO_PAIRS = {"train": 48, "test": 16}
PSEUDO_SIZE = 256
LEVIR_PASTE_PAIRS = 48  # building copy-paste pairs in change/train-paste
MIN_BUILDING_PX = 40  # smaller changed regions (label slivers) are not pasted
DUBAI_TILES = {"train": ("Tile 1", "Tile 2", "Tile 3", "Tile 4", "Tile 7", "Tile 8"), "test": ("Tile 6",)}
PASTED = (0, 2, 3, 4)  # building, road, vegetation, water (not land)
DUBAI_COLOURS = ((0x3C, 0x10, 0x98), (0x84, 0x29, 0xF6), (0x6E, 0xC1, 0xE4), (0xFE, 0xDD, 0x3A), (0xE2, 0xA9, 0x29))


def _link(src: Path, dst: Path) -> None:
    if not src.exists():
        raise FileNotFoundError(f"{src}: missing from the shared data")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


def voc_renamed(text: str, names: dict[str, str]) -> str:
    """A Pascal VOC file with its ``<name>`` values mapped."""
    return re.sub(r"<name>([^<]*)</name>", lambda m: f"<name>{names.get(m.group(1), m.group(1))}</name>", text)


def voc_document(image: str, size: tuple[int, int], objects: list[tuple[str, list[str]]]) -> str:
    """A Pascal VOC file for ``image`` of ``size`` (w, h): ``(name, [xmin, ymin, xmax, ymax])`` each."""
    rows = [f"  <object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects]
    return (f"<annotation>\n  <filename>{image}</filename>\n  <size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>\n" + "\n".join(rows)
            + "\n</annotation>\n")


def voc_from_truth_csv(text: str, image: str, size: tuple[int, int]) -> str:
    """A Pascal VOC file (class ``Tree``) from a DeepForest truth csv whose columns are
    ``image_path,xmin,xmax,ymin,ymax,label`` (the SJER tile's order)."""
    objects = []
    for row in text.strip().splitlines()[1:]:
        _, xmin, xmax, ymin, ymax, _ = row.split(",")
        objects.append(("Tree", [xmin, ymin, xmax, ymax]))
    return voc_document(image, size, objects)


def voc_cut_rows(text: str, image: str, width: int, y0: int, y1: int) -> str:
    """The objects of a Pascal VOC file whose centre lies in rows [y0, y1), shifted by -y0 and
    clipped to the cut, as the VOC file of the cut image ``image`` (``width`` × ``y1 - y0``)."""
    objects = []
    for obj in ElementTree.fromstring(text).iter("object"):
        box = obj.find("bndbox")
        assert box is not None
        xmin, ymin, xmax, ymax = (float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        if not y0 <= (ymin + ymax) / 2 < y1:
            continue
        ys = [min(max(y, y0), y1) - y0 for y in (ymin, ymax)]
        objects.append((obj.findtext("name", ""), [f"{xmin:g}", f"{ys[0]:g}", f"{xmax:g}", f"{ys[1]:g}"]))
    return voc_document(image, (width, y1 - y0), objects)


def geotiff_rows(src: Path, dst: Path, y0: int, y1: int) -> None:
    """Rows [y0, y1) of a GeoTIFF, written on the source's grid (same CRS, the window's transform)."""
    with rasterio.open(src) as ds:
        window = Window(0, y0, ds.width, y1 - y0)
        profile = {**ds.profile, "height": y1 - y0, "transform": ds.window_transform(window)}
        data = ds.read(window=window)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)


def dota_renamed(text: str, names: dict[str, str]) -> str:
    """A DOTA label file with the class column (9th field of each box line) mapped."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[8] in names:
            fields[8] = names[fields[8]]
            line = " ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


def dota_cut(text: str, x0: int, x1: int) -> str:
    """The objects of a DOTA label file whose centre lies in columns [x0, x1), shifted by -x0 and
    clipped to the cut; header lines are kept."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 9:
            out.append(line)
            continue
        xs, ys = [float(v) for v in fields[0:8:2]], [float(v) for v in fields[1:8:2]]
        if not x0 <= sum(xs) / 4 < x1:
            continue
        xs = [min(max(x, x0), x1) - x0 for x in xs]
        corners = " ".join(f"{x:g} {y:g}" for x, y in zip(xs, ys))
        out.append(f"{corners} {' '.join(fields[8:])}")
    return "\n".join(out) + "\n"


def prepare(shared: Path, out: Path) -> dict[str, int]:
    """Write the folders; returns the number of images per folder."""
    counts = {}
    trees = shared / "neon_trees"
    for split, images in TREES.items():
        for name in images:
            image = trees / name
            _link(image, out / "trees" / split / name)
            xml = image.with_suffix(".xml")
            (out / "trees" / split / xml.name).write_text(voc_renamed(xml.read_text(), TREE_NAMES))
        counts[f"trees/{split}"] = len(images)
    osbs = trees / OSBS
    with rasterio.open(osbs) as ds:
        width, height = ds.width, ds.height
    for split, (y0, y1) in {"train": (0, OSBS_SPLIT_Y), "test": (OSBS_SPLIT_Y, height)}.items():
        name = f"{osbs.stem}_y{y0}-{y1}"
        geotiff_rows(osbs, out / "trees" / split / f"{name}.tif", y0, y1)
        (out / "trees" / split / f"{name}.xml").write_text(
            voc_cut_rows(osbs.with_suffix(".xml").read_text(), f"{name}.tif", width, y0, y1))
    counts["trees/train"] += 1
    counts["trees/test"] = 1
    select = trees / TREES_SELECT
    _link(select, out / "trees" / "select" / select.name)
    truth = select.with_name(select.stem + "_truth.csv")
    with Image.open(select) as im:
        size = im.size
    (out / "trees" / "select" / select.with_suffix(".xml").name).write_text(
        voc_from_truth_csv(truth.read_text(), select.name, size))
    counts["trees/select"] = 1
    dota = shared / "dota_harbour"
    _link(dota / "P1888.png", out / "dota" / "train" / "P1888.png")
    (out / "dota" / "train" / "P1888.txt").write_text(dota_renamed((dota / "P1888.txt").read_text(), DOTA_NAMES))
    marina = Image.open(dota / "P0706_north.png").convert("RGB")
    labels = dota_renamed((dota / "P0706_north.txt").read_text(), DOTA_NAMES)
    for split, (x0, x1) in {"train": (0, DOTA_SPLIT_X), "test": (DOTA_SPLIT_X, marina.width)}.items():
        name = f"P0706_north_x{x0}-{x1}"
        (out / "dota" / split).mkdir(parents=True, exist_ok=True)
        marina.crop((x0, 0, x1, marina.height)).save(out / "dota" / split / f"{name}.png")
        (out / "dota" / split / f"{name}.txt").write_text(dota_cut(labels, x0, x1))
    counts["dota/train"], counts["dota/test"] = 2, 1
    counts.update(detection_sets(shared, out))
    counts.update(change_sets(shared, out))
    return counts


def dubai_classes(mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Class index per pixel of a Dubai colour mask (order of ``DUBAI_COLOURS``; 255 = unlabelled)."""
    out = np.full(mask.shape[:2], 255, np.uint8)
    for k, colour in enumerate(DUBAI_COLOURS):
        out[(mask[..., :3] == colour).all(-1)] = k
    return out


def _window(rng: random.Random, image: NDArray[np.uint8], size: int) -> tuple[slice, slice]:
    y, x = rng.randrange(image.shape[0] - size + 1), rng.randrange(image.shape[1] - size + 1)
    return slice(y, y + size), slice(x, x + size)


def pseudo_pair(rng: random.Random, scenes: list[tuple[NDArray[np.uint8], NDArray[np.uint8]]],
                size: int = PSEUDO_SIZE) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """A synthetic before/after pair and its change label from single-date labelled scenes.

    ``scenes`` are (RGB image, class index) pairs. The first date is a window of one scene; the
    second is the same window with up to three land-cover patches pasted in from other windows:
    the pixels of one class inside a random rectangle of a source window (so changes have the
    shapes of real buildings, roads, vegetation or water, not of rectangles; bare land, the
    background of most windows, is never pasted). Changed = pasted pixels whose class differs
    from what was there. One pair in six gets no paste (no change).
    The whole second date is then shifted in brightness and colour, as two acquisitions are.
    Returns (before, after, label) with label 0 = unchanged, 255 = changed.
    """
    image, classes = scenes[rng.randrange(len(scenes))]
    win = _window(rng, image, size)
    before, before_cls = image[win].copy(), classes[win]
    after, changed = before.astype(np.float32), np.zeros((size, size), bool)
    for _ in range(0 if rng.random() < 1 / 6 else rng.randint(1, 3)):
        src_image, src_classes = scenes[rng.randrange(len(scenes))]
        src = _window(rng, src_image, size)
        h, w = rng.randint(size // 6, size * 3 // 4), rng.randint(size // 6, size * 3 // 4)
        y, x = rng.randrange(size - h + 1), rng.randrange(size - w + 1)
        rect = np.zeros((size, size), bool)
        rect[y:y + h, x:x + w] = True
        src_cls = src_classes[src]
        present = [int(c) for c in np.unique(src_cls[rect])
                   if c in PASTED and (src_cls[rect] == c).mean() > 0.05]
        if not present:
            continue
        paste = rect & (src_cls == rng.choice(present))
        after[paste] = src_image[src][paste]
        changed |= paste & (src_cls != before_cls) & (before_cls != 255)
    gain = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
    after = np.clip(after * gain + rng.uniform(-15, 15), 0, 255).astype(np.uint8)
    return before, after, np.where(changed, 255, 0).astype(np.uint8)


def new_buildings(pairs: list[tuple[NDArray[np.uint8], ...]]
                  ) -> list[tuple[NDArray[np.uint8], NDArray[np.bool_]]]:
    """The new buildings of (before, after, label) change pairs: each connected region of changed
    pixels (of at least ``MIN_BUILDING_PX``) as (second date, region mask), both cut to the
    region's bounding box."""
    buildings = []
    for _, after, label in pairs:
        regions, _ = ndimage.label(label > 0)
        for k, box in enumerate(ndimage.find_objects(regions), start=1):
            mask = regions[box] == k
            if mask.sum() >= MIN_BUILDING_PX:
                buildings.append((after[box], mask))
    return buildings


def building_paste_pair(rng: random.Random, pairs: list[tuple[NDArray[np.uint8], ...]],
                        buildings: list[tuple[NDArray[np.uint8], NDArray[np.bool_]]]
                        ) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """A before/after pair with new buildings copied in from real change pairs.

    ``pairs`` are (before, after, label) LEVIR-CD pairs (label 255 = new building), ``buildings``
    their :func:`new_buildings`. The host is one pair: half the time its real second date and
    label are kept, otherwise its first date is used again as the second (label 0 everywhere).
    One to four buildings (real roofs with their real outlines) are then pasted into the second
    date, each turned by a random quarter turn or flip and placed anywhere; pasted pixels become
    changed. The second date is finally shifted in brightness and colour.
    Returns (before, after, label) with label 0 = unchanged, 255 = changed.
    """
    before, after_real, label_real = pairs[rng.randrange(len(pairs))]
    keep_real = rng.random() < 0.5
    after = (after_real if keep_real else before).astype(np.float32)
    changed = label_real > 0 if keep_real else np.zeros(before.shape[:2], bool)
    for _ in range(rng.randint(1, 4)):
        patch, mask = buildings[rng.randrange(len(buildings))]
        turns, flip = rng.randrange(4), rng.random() < 0.5
        patch, mask = np.rot90(patch, turns), np.rot90(mask, turns)
        if flip:
            patch, mask = patch[:, ::-1], mask[:, ::-1]
        ph, pw = mask.shape
        y, x = rng.randrange(before.shape[0] - ph + 1), rng.randrange(before.shape[1] - pw + 1)
        region = after[y:y + ph, x:x + pw]
        region[mask] = patch[mask]
        changed[y:y + ph, x:x + pw] |= mask
    gain = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], np.float32)
    after = np.clip(after * gain + rng.uniform(-10, 10), 0, 255).astype(np.uint8)
    return before, after, np.where(changed, 255, 0).astype(np.uint8)


def change_role(folder: str, stem: str) -> str:
    """What a real change pair of ``folder`` is for: "test" (held out), "select" (model
    selection) or "train"."""
    if stem in CHANGE_TEST[folder]:
        return "test"
    return "select" if stem in CHANGE_SELECT.get(folder, ()) else "train"


def levir_training_pairs(shared: Path) -> list[tuple[str, tuple[NDArray[np.uint8], ...]]]:
    """(name, (before, after, label)) of the LEVIR-CD training pairs: the only sources of the
    buildings that :func:`building_paste_pair` pastes (never a selection or held-out pair)."""
    return [(a.stem, tuple(np.asarray(Image.open(shared / "change" / part / a.name).convert(mode))
                           for part, mode in (("A", "RGB"), ("B", "RGB"), ("label", "L"))))
            for a in sorted((shared / "change" / "A").glob("*.png"))
            if change_role("change", a.stem) == "train"]


def change_sets(shared: Path, out: Path) -> dict[str, int]:
    """The change detector's folders (see the module docstring)."""
    counts = {"change/train": 0, "change/train-paste": 0}

    def link_pair(folder: str, a: Path, split: str, name: str) -> None:
        for part in ("A", "B", "label"):
            _link(shared / folder / part / a.name, out / "change" / split / part / name)
        counts[f"change/{split}"] = counts.get(f"change/{split}", 0) + 1

    for folder, prefix in CHANGE_PREFIX.items():
        for a in sorted((shared / folder / "A").glob("*.png")):
            role = change_role(folder, a.stem)
            if role != "train":
                link_pair(folder, a, f"{prefix}-{role}", f"{prefix}_{a.stem}.png")
                continue
            for k in range(CHANGE_REPEAT):
                for split in ("train", "train-paste"):
                    link_pair(folder, a, split, f"{prefix}_{a.stem}_r{k}.png")

    def write_pair(split: str, name: str, arrays: tuple[NDArray[np.uint8], ...]) -> None:
        for part, array in zip(("A", "B", "label"), arrays, strict=True):
            (out / "change" / split / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(out / "change" / split / part / name)
        counts[f"change/{split}"] = counts.get(f"change/{split}", 0) + 1

    rng = random.Random(0)
    for split, tiles in DUBAI_TILES.items():
        scenes = []
        for tile in tiles:
            for image in sorted((shared / "dubai" / tile / "images").glob("*.jpg")):
                rgb = np.asarray(Image.open(image).convert("RGB"))
                mask = np.asarray(Image.open(image.parent.parent / "masks" / f"{image.stem}.png").convert("RGB"))
                h, w = min(rgb.shape[0], mask.shape[0]), min(rgb.shape[1], mask.shape[1])
                if min(h, w) >= PSEUDO_SIZE:
                    scenes.append((rgb[:h, :w], dubai_classes(mask[:h, :w])))
        for i in range(PSEUDO_PAIRS[split]):
            pair = pseudo_pair(rng, scenes)
            for folder in (("train", "train-paste") if split == "train" else ("dubai-test",)):
                write_pair(folder, f"dubai_{i:03d}.png", pair)
    paste_sources = [pair for _, pair in levir_training_pairs(shared)]
    rng, buildings = random.Random(1), new_buildings(paste_sources)
    for i in range(LEVIR_PASTE_PAIRS):
        pair = building_paste_pair(rng, paste_sources, buildings)
        write_pair("train-paste", f"levir_paste_{i:03d}.png", pair)
    return counts


def detection_sets(shared: Path, out: Path) -> dict[str, int]:
    """COCO files of the ten-class detector's data (see the module docstring)."""
    from dynamicvis_cli.data.convert import to_coco
    from dynamicvis_cli.data.discover import open_dataset
    from dynamicvis_cli.data.nwpu import NWPU_CLASSES
    from dynamicvis_cli.data.records import DatasetSpec

    def read(path: Path, fmt: str) -> DatasetSpec:
        return open_dataset(path, "detect", format=fmt, classes=list(NWPU_CLASSES))

    nwpu = shared / "nwpu_vhr10"
    nwpu_train, dota_train = read(nwpu / "train", "nwpu"), read(out / "dota" / "train", "dota")
    repeated = dataclasses.replace(dota_train, records=[r for r in dota_train.records
                                                        for _ in range(DOTA_REPEAT.get(r.image.name, 1))])
    sets = {
        "train": [nwpu_train, dota_train],
        "train-balanced": [nwpu_train, repeated],
        "val": [read(nwpu / "val", "nwpu")],
        "marina": [read(out / "dota" / "test", "dota")],
    }
    counts = {}
    for name, specs in sets.items():
        merged = DatasetSpec(root=out / "detect", format="coco", task="detect", classes=list(NWPU_CLASSES),
                             records=[r for s in specs for r in s.records])
        (out / "detect").mkdir(parents=True, exist_ok=True)
        to_coco(merged, out / "detect" / f"{name}.json")
        counts[f"detect/{name}"] = len(merged.records)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data/ folder")
    ap.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out == REPO or REPO in out.parents:
        print(f"error: {out} is inside the repository; write elsewhere", file=sys.stderr)
        return 2
    if out.exists():
        if not args.overwrite:
            print(f"error: {out} exists; pass --overwrite", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    try:
        counts = prepare(args.shared, out)
    except (OSError, DvisError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print({"out": str(out), "images": counts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
