"""Scene-level precision, recall and F1 of ``dvis detect`` against its ``--threshold``.

Runs ``dvis detect --pixel-coords`` once over every image of a labelled COCO file (a low floor
threshold), then counts, for each threshold, the boxes that match an unmatched object of their
class at IoU >= 0.5 (COCOeval's greedy matching, highest score first). This is what an analyst
sees from the command, unlike COCO AP, which is computed over every score. Filtering the floor
run's boxes by score gives what a run at that threshold writes: greedy NMS only lets a box
suppress lower-scoring ones (checked on six NWPU images at 0.5: the same boxes and scores). Use
a selection split to choose a threshold (the model card of ``tiny.nwpu-dota`` quotes this script
on NWPU VHR-10 ``val``).

Usage (the COCO file comes from ``scripts/prepare_release_data.py``)::

    python benchmarks/detect_threshold.py --data /tmp/release-data/detect/val.json \\
        -m tiny.nwpu-dota --out benchmarks/results/detect-threshold-nwpu-val.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from numpy.typing import NDArray

from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.errors import DvisError
from dynamicvis_cli.evaluate.coco import _match as coco_match
from dynamicvis_cli.train.metrics import box_iou

THRESHOLDS = (0.3, 0.4, 0.45, 0.5, 0.55, 0.6)
FLOOR = 0.1


def matched(
    found: NDArray[np.float64],
    scores: NDArray[np.float64],
    truth: NDArray[np.float64],
    iou: float = 0.5,
) -> int:
    """Boxes of ``found`` matched one-to-one to ``truth`` at ``iou``: COCOeval's greedy matching
    (highest score first, each to its best free object), as ``dvis evaluate`` does."""
    if not len(found) or not len(truth):
        return 0
    order = np.argsort(-scores, kind="stable")
    hits, _ = coco_match(box_iou(found[order], truth), np.zeros(len(truth), dtype=bool), iou)
    return int(hits.sum())


def score(
    pairs: list[tuple[Any, gpd.GeoDataFrame]], classes: list[str], threshold: float
) -> dict[str, Any]:
    per_class: dict[str, dict[str, int]] = {
        c: {"boxes": 0, "right": 0, "objects": 0} for c in classes
    }
    for record, found in pairs:
        for k, name in enumerate(classes):
            truth = record.boxes[np.asarray(record.labels) == k]
            mine = found[(found["class"] == name) & (found["score"] >= threshold)]
            xyxy = mine[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
            m = matched(xyxy, mine["score"].to_numpy(dtype=np.float64), truth)
            for key, n in (("boxes", len(xyxy)), ("right", m), ("objects", len(truth))):
                per_class[name][key] += n
    boxes, right, objects = (
        sum(c[key] for c in per_class.values()) for key in ("boxes", "right", "objects")
    )
    precision = right / boxes if boxes else 0.0
    recall = right / objects if objects else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": threshold,
        "boxes": boxes,
        "right": right,
        "objects": objects,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "per_class": per_class,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a labelled COCO .json")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = ap.parse_args(argv)
    try:
        spec = open_dataset(args.data, "detect", format="coco")
    except DvisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = [Path(r.image) for r in spec.records]
    if len({p.stem for p in images}) != len(images):
        print(f"error: {args.data}: image names repeat; outputs would collide", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            "dvis",
            "detect",
            *map(str, images),
            "--out-dir",
            tmp,
            "--name-template",
            "{stem}.gpkg",
            "--pixel-coords",
            "-m",
            args.model,
            "--threshold",
            str(FLOOR),
            "-q",
        ]
        # on failure dvis has said why on stderr; pass its exit code on
        done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        if done.returncode:
            return done.returncode
        pairs = [(r, gpd.read_file(Path(tmp) / f"{Path(r.image).stem}.gpkg")) for r in spec.records]
    runs = [score(pairs, list(spec.classes), t) for t in THRESHOLDS]
    report = {
        "data": str(args.data),
        "model": args.model,
        "images": len(images),
        "iou": 0.5,
        "runs": runs,
    }
    print("| threshold | boxes | right | precision | recall | F1 |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['threshold']} | {r['boxes']:,} | {r['right']} | {r['precision']:.2f} | "
            f"{r['recall']:.2f} | {r['f1']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
