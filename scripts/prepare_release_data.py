"""Training/validation folders for the released models, rebuilt from ../shared/data.

The shared sets are kept exactly as shipped; a few need their splits separated or their class
names unified before ``dvis finetune`` / ``dvis pretrain`` read them. This script writes those
folders (images are symbolic links, annotation files are rewritten copies), so every released
model's training command can be repeated:

- ``OUT/trees/train``: NEON ``SOAP_061`` and ``2019_YELL_2_…_image_crop`` (Pascal VOC); SOAP's
  ``Alive``/``Dead`` crowns become ``Tree`` (the class of every other NEON file);
- ``OUT/trees/val``: ``OSBS_029.tif`` + its VOC file (georeferenced, EPSG:32617);
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
  (``DOTA_REPEAT``), so that the one training marina is not 1 crop in 181.

Usage::

    python scripts/prepare_release_data.py --out /tmp/release-data

The output folder must be outside the repository; an existing one is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
from pathlib import Path

from PIL import Image

from dynamicvis_cli.errors import DvisError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"

TREE_NAMES = {"Alive": "Tree", "Dead": "Tree"}
DOTA_NAMES = {"small-vehicle": "vehicle", "large-vehicle": "vehicle"}
TREES = {"train": ["SOAP_061.png", "2019_YELL_2_541000_4977000_image_crop.png"], "val": ["OSBS_029.tif"]}
DOTA_SPLIT_X = 740  # P0706_north: columns left of this train, the rest test
DOTA_REPEAT = {"P0706_north_x0-740.png": 20, "P1888.png": 5}  # times listed in train-balanced.json


def _link(src: Path, dst: Path) -> None:
    if not src.exists():
        raise FileNotFoundError(f"{src}: missing from the shared data")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


def voc_renamed(text: str, names: dict[str, str]) -> str:
    """A Pascal VOC file with its ``<name>`` values mapped."""
    return re.sub(r"<name>([^<]*)</name>", lambda m: f"<name>{names.get(m.group(1), m.group(1))}</name>", text)


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
