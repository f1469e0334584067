"""Labelled land-cover chips from the Dubai segmentation tiles: a stand-in for EuroSAT.

EuroSAT is not available to this project (see ../shared/data/README.md), so retrieval is scored
on chips cut from the real Dubai aerial tiles (``../shared/data/dubai``, Humans in the Loop /
MBRSC, CC0 as listed by the original release). Each image is cut into CHIP × CHIP chips on a
STRIDE grid; each chip is labelled from its colour mask:

- single label: the majority class among labelled pixels (ImageFolder layout
  ``OUT/<split>/<class>/<name>.png``); chips whose majority covers less than ``--min-majority``
  of the chip, or that are mostly unlabeled, are left out;
- multi-label: every class covering at least ``--multi-share`` of the labelled pixels
  (``OUT/labels.csv``: path,labels,split,majority; labels separated by ``;``).

Split by whole tiles, as the data set's README gives it (spatially disjoint): train = Tiles 1, 2,
3, 4, 7, 8; val = Tile 6. Validation chips come from images the gallery never saw. ``--split
"Tile 8=select"`` moves a tile to a split of its own (used to choose between models without
looking at Tile 6).

Usage::

    python benchmarks/make_landcover_chips.py --out /tmp/dubai-chips [--chip 128] [--stride 128]

The output folder must be outside the repository; an existing one is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dubai"

#: Mask colours actually used by the masks (dubai/README.md), → class name.
PALETTE = {
    (0x3C, 0x10, 0x98): "building",
    (0x84, 0x29, 0xF6): "land",
    (0x6E, 0xC1, 0xE4): "road",
    (0xFE, 0xDD, 0x3A): "vegetation",
    (0xE2, 0xA9, 0x29): "water",
}
#: Unlabeled (#9B9B9B) and pure black count as "no label".
SPLITS = {"Tile 1": "train", "Tile 2": "train", "Tile 3": "train", "Tile 4": "train",
          "Tile 7": "train", "Tile 8": "train", "Tile 6": "val"}


def class_map(mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) colour mask → (H, W) int8 class index into PALETTE order, -1 for no label."""
    out = np.full(mask.shape[:2], -1, dtype=np.int8)
    for i, colour in enumerate(PALETTE):
        out[(mask == np.array(colour, dtype=np.uint8)).all(axis=-1)] = i
    return out


def chip_labels(classes: np.ndarray, *, min_labelled: float, min_majority: float,
                multi_share: float) -> tuple[str, list[str]] | None:
    """(majority, multi-labels) of a chip's class map, or None when it is left out."""
    names = list(PALETTE.values())
    labelled = classes[classes >= 0]
    if labelled.size < min_labelled * classes.size:
        return None
    counts = np.bincount(labelled, minlength=len(names)).astype(float)
    top = int(counts.argmax())
    if counts[top] < min_majority * classes.size:
        return None
    multi = [names[i] for i in range(len(names)) if counts[i] >= multi_share * labelled.size]
    return names[top], multi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the dubai/ folder")
    ap.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    ap.add_argument("--chip", type=int, default=128)
    ap.add_argument("--stride", type=int, default=None)
    ap.add_argument("--min-labelled", type=float, default=0.5, help="least share of labelled pixels")
    ap.add_argument("--min-majority", type=float, default=0.4, help="least share of the majority class")
    ap.add_argument("--multi-share", type=float, default=0.1,
                    help="share of labelled pixels for a multi-label")
    ap.add_argument("--split", action="append", default=[], metavar="TILE=SPLIT",
                    help="put a tile in another split, e.g. 'Tile 8=select' (a model-selection split)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    splits = dict(SPLITS)
    for item in args.split:
        tile, sep, split = item.partition("=")
        if not sep or tile not in splits or not split:
            print(f"error: --split {item!r}: expected TILE=SPLIT with TILE one of {sorted(splits)}",
                  file=sys.stderr)
            return 2
        splits[tile] = split
    out = args.out.resolve()
    if out == REPO or REPO in out.parents:
        print(f"error: {out} is inside the repository; write chips elsewhere", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"error: {args.data}: no such folder (needs ../shared/data/dubai)", file=sys.stderr)
        return 2
    if out.exists():
        if not args.overwrite:
            print(f"error: {out} exists; pass --overwrite", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    stride = args.stride or args.chip
    rows = []
    for tile, split in sorted(splits.items()):
        for image_path in sorted((args.data / tile / "images").glob("*.jpg")):
            mask_path = args.data / tile / "masks" / (image_path.stem + ".png")
            image = np.asarray(Image.open(image_path).convert("RGB"))
            classes = class_map(np.asarray(Image.open(mask_path).convert("RGB")))
            h, w = min(image.shape[0], classes.shape[0]), min(image.shape[1], classes.shape[1])
            for r in range(0, h - args.chip + 1, stride):
                for c in range(0, w - args.chip + 1, stride):
                    found = chip_labels(classes[r:r + args.chip, c:c + args.chip],
                                        min_labelled=args.min_labelled, min_majority=args.min_majority,
                                        multi_share=args.multi_share)
                    if found is None:
                        continue
                    majority, multi = found
                    name = f"{tile.replace(' ', '')}_{image_path.stem}_r{r:04d}_c{c:04d}.png"
                    rel = Path(split) / majority / name
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image[r:r + args.chip, c:c + args.chip]).save(out / rel)
                    rows.append({"path": rel.as_posix(), "labels": ";".join(multi), "split": split,
                                 "majority": majority})
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "labels", "split", "majority"])
        writer.writeheader()
        writer.writerows(rows)
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["split"], {}).setdefault(row["majority"], 0)
        counts[row["split"]][row["majority"]] += 1
    print({"out": str(out), "chips": len(rows), "per_split_majority": counts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
