"""Land-cover classification: dvis ``small`` vs torchvision ResNet-18, same data, budget, no pretraining.

EuroSAT is not available to this project (../shared/data/README.md), so the chips come from the
real Dubai aerial tiles through ``benchmarks/make_landcover_chips.py`` (single-label ImageFolder
``CHIPS/train/<class>/`` from Tiles 1, 2, 3, 4, 7, 8 and ``CHIPS/val/<class>/`` from Tile 6 —
images training never saw). A balanced random subset (``--train-per-class``, ``--val-per-class``,
seed 0) keeps the run to minutes on a CPU.

Both models start from **random weights** (no DynamicVis weights exist for dvis yet, and
ImageNet weights for ResNet-18 are not downloaded): this compares architectures under a tiny
budget, not pretrained DynamicVis. Both see the same chips in the same order, the same
normalisation (ImageNet mean/std, as dvis models use), random flips, AdamW (lr, weight decay),
batch size and epochs. Metrics on the val chips: accuracy and macro F1
(:class:`dynamicvis_cli.train.metrics.ConfusionMatrix`), training and evaluation wall time.

Usage::

    python benchmarks/make_landcover_chips.py --out /tmp/chips64 --chip 64 --stride 64
    python benchmarks/classify_baseline.py /tmp/chips64 --epochs 3 \
        --out benchmarks/results/classify-baseline-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dynamicvis_cli.train.metrics import ConfusionMatrix

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def load_split(root: Path, classes: list[str], per_class: int, rng: np.random.Generator,
               size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """A balanced random subset of ``root/<class>/*.png`` as normalised (N, 3, size, size) tensors."""
    xs, ys, counts = [], [], {}
    for k, name in enumerate(classes):
        files = sorted((root / name).glob("*.png"))
        pick = rng.permutation(len(files))[:per_class]
        counts[name] = len(pick)
        for i in pick:
            img = Image.open(files[i]).convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            a = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
            xs.append((a - MEAN) / STD)
            ys.append(k)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys), counts


def build(name: str, classes: list[str]) -> nn.Module:
    torch.manual_seed(0)
    if name == "dvis-small":
        from dynamicvis_cli.checkpoints.task import load_task_model

        return load_task_model("small", "classify", classes=classes, random_weights=True).module
    if name == "resnet18":
        import torchvision

        return torchvision.models.resnet18(weights=None, num_classes=len(classes))
    raise SystemExit(f"unknown model {name}")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str],
             batch: int) -> dict[str, Any]:
    model.eval()
    cm = ConfusionMatrix(len(classes))
    for i in range(0, len(x), batch):
        cm.update(model(x[i:i + batch]).argmax(1), y[i:i + batch])
    s = cm.scores(classes)
    return {"accuracy": s["accuracy"], "f1_macro": s["f1"], "precision_macro": s["precision"],
            "recall_macro": s["recall"], "per_class_f1": {k: v["f1"] for k, v in s["per_class"].items()}}


def train(name: str, classes: list[str], xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor,
          yv: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    model = build(name, classes)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)  # same order and flips for both models
    losses = []
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb = xt[idx]
            flip = torch.rand(len(idx), 2, generator=gen)
            xb = torch.where(flip[:, 0, None, None, None] < 0.5, xb.flip(-1), xb)
            xb = torch.where(flip[:, 1, None, None, None] < 0.5, xb.flip(-2), xb)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = evaluate(model, xv, yv, classes, args.batch_size)
    eval_s = time.perf_counter() - t1
    print(f"{name}: acc {scores['accuracy']:.3f} F1 {scores['f1_macro']:.3f} "
          f"train {train_s:.0f} s", file=sys.stderr)
    return {"model": name, "weights": "random (seed 0)", "parameters_m": round(params / 1e6, 2),
            "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
            "steps": len(losses), "first_loss": round(losses[0], 4), "last_epoch_mean_loss":
            round(float(np.mean(losses[-max(1, len(losses) // args.epochs):])), 4), **scores}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": "cpu",
            "load_average_at_start": [round(v, 2) for v in load]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chips", type=Path, help="output of make_landcover_chips.py (train/ and val/)")
    ap.add_argument("--models", default="dvis-small,resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-per-class", type=int, default=80)
    ap.add_argument("--val-per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for split in ("train", "val"):
        if not (args.chips / split).is_dir():
            print(f"error: {args.chips / split}: no such folder (run make_landcover_chips.py)",
                  file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    train_classes = {p.name for p in (args.chips / "train").iterdir() if p.is_dir()}
    val_classes = {p.name for p in (args.chips / "val").iterdir() if p.is_dir()}
    classes = sorted(train_classes & val_classes)  # a class absent from val cannot be scored
    rng = np.random.default_rng(0)
    xt, yt, train_counts = load_split(args.chips / "train", classes, args.train_per_class, rng, args.size)
    xv, yv, val_counts = load_split(args.chips / "val", classes, args.val_per_class, rng, args.size)
    report: dict[str, Any] = {
        "benchmark": "classify_baseline", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "data": {"source": "../shared/data/dubai via benchmarks/make_landcover_chips.py (majority label)",
                 "train": "Tiles 1,2,3,4,7,8", "val": "Tile 6 (images training never saw)",
                 "chip_px": args.size, "classes": classes, "train_counts": train_counts,
                 "val_counts": val_counts},
        "budget": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "AdamW",
                   "lr": args.lr, "weight_decay": args.weight_decay, "augment": "random h/v flips",
                   "schedule": "constant lr"},
        "note": "both models start from random weights: architectures under a tiny budget, "
                "not pretrained DynamicVis",
        "results": [],
    }
    for name in args.models.split(","):
        report["results"].append(train(name.strip(), classes, xt, yt, xv, yv, args))
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
