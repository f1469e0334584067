"""Does meta-embedding pretraining help? ``dvis pretrain`` on the NWPU VHR-10 + SSDD regions, then
the same fine-tuning from the pretrained backbone and from random initialisation.

Every step is the real command line (``python -m dynamicvis_cli ...`` subprocesses):

1. ``dvis data shard`` the NWPU VHR-10 train split (179 images, 1,159 boxes, 10 categories) and
   the SSDD train images (2 SAR images, 4 ships; ``ship`` is shared with NWPU);
2. ``dvis pretrain`` the chosen architecture on both shard sets (MIL-NCE + CE, random
   category embeddings);
3. fine-tune, once from the pretrained backbone and once from random weights, with the same
   steps, batch, learning rate and seed:

   * land-cover classification on the 64 px chips of the Dubai tiles (the project's EuroSAT
     stand-in, ``benchmarks/make_landcover_chips.py``; train Tiles 1-4, 7, 8, val Tile 6);
   * NWPU VHR-10 detection (train split), evaluated on the val split (62 images training and
     pretraining never saw) with COCO AP;

4. ``dvis evaluate`` each fine-tuned model on its held-out split.

Usage::

    python benchmarks/make_landcover_chips.py --out /tmp/chips64 --chip 64 --stride 64
    python benchmarks/pretrain_experiment.py --chips /tmp/chips64 --work /tmp/pre-exp \\
        --model tiny --out benchmarks/results/pretrain-experiment-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHARED = Path(os.environ.get("DVIS_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def dvis(*args: object) -> tuple[dict[str, Any], float]:
    """Run a dvis command; (its JSON summary, wall seconds). Stops the experiment on failure."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dynamicvis_cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"dvis {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), round(time.perf_counter() - t, 1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=Path, required=True, help="make_landcover_chips.py output (train/, val/)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (outside the repository)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--pretrain-batch", type=int, default=8)
    ap.add_argument("--pretrain-tile", type=int, default=256)
    ap.add_argument("--classify-steps", type=int, default=150)
    ap.add_argument("--detect-steps", type=int, default=200)
    ap.add_argument("--detect-tile", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    nwpu, ssdd = SHARED / "data" / "nwpu_vhr10", SHARED / "data" / "ssdd"
    w = args.work
    if w.exists():
        shutil.rmtree(w)
    w.mkdir(parents=True)
    report: dict[str, Any] = {"model": args.model, "device": args.device, "cpu": cpu_name(),
                              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "args": {
                                  k: str(v) for k, v in vars(args).items()}}
    s1, t1 = dvis("data", "shard", nwpu / "train" / "instances_train.json", "--image-root", nwpu / "train" / "images",
                  "-o", w / "s-nwpu", "--samples-per-shard", 40, "-q")
    s2, t2 = dvis("data", "shard", ssdd / "train" / "instances_train.json", "--image-root",
                  ssdd / "train" / "JPEGImages", "-o", w / "s-ssdd", "-q")
    report["shards"] = {"nwpu": {k: s1[k] for k in ("shards", "samples", "boxes")},
                        "ssdd": {k: s2[k] for k in ("shards", "samples", "boxes")}, "seconds": t1 + t2}
    pre, tp = dvis("pretrain", "--data", f"{w / 's-nwpu'}::{w / 's-ssdd'}", "-m", args.model,
                   "--classes", ",".join(s1["classes"]), "--tile-size", args.pretrain_tile,
                   "--steps", args.pretrain_steps, "--batch-size", args.pretrain_batch, "--lr", 1e-3,
                   "--device", args.device, "--log-every", 10, "-o", w / "pre", "-q")
    report["pretrain"] = {k: pre[k] for k in ("samples", "steps", "batch_size", "first_loss", "final_loss",
                                              "logit_scale", "wall_s")}
    for start, model in (("pretrained", w / "pre"), ("random", args.model)):
        row: dict[str, Any] = {}
        ft, t = dvis("finetune", "--task", "classify", "--data", args.chips / "train", "-m", model,
                     "--tile-size", 64, "--steps", args.classify_steps, "--batch-size", 32, "--lr", 1e-3,
                     "--freeze-stages", 0, "--device", args.device, "-o", w / f"cls-{start}", "-q")
        ev, te = dvis("evaluate", "--task", "classify", "-m", w / f"cls-{start}", "--data", args.chips / "val",
                      "--device", args.device, "-q")
        m = ev["metrics"]
        row["classify"] = {"train_s": ft["wall_s"], "final_loss": ft["final_loss"], "eval_s": te,
                           "val_items": ev["items"], "accuracy": m["accuracy"], "f1": m["f1"]}
        ft, t = dvis("finetune", "--task", "detect", "--data", nwpu / "train" / "instances_train.json",
                     "--set", f"image_root={nwpu / 'train' / 'images'}", "-m", model, "--tile-size", args.detect_tile,
                     "--steps", args.detect_steps, "--batch-size", 4, "--lr", 5e-4, "--device", args.device,
                     "-o", w / f"det-{start}", "-q")
        ev, te = dvis("evaluate", "--task", "detect", "-m", w / f"det-{start}", "--data",
                      nwpu / "val" / "instances_val.json", "--image-root", nwpu / "val" / "images",
                      "--device", args.device, "-q")
        m = ev["metrics"]
        row["detect"] = {"train_s": ft["wall_s"], "final_loss": ft["final_loss"], "eval_s": te,
                         "val_items": ev["items"], **{k: m[k] for k in ("ap", "ap50", "ap75", "ap_small")}}
        report[start] = row
        print(json.dumps({start: row}), file=sys.stderr)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
