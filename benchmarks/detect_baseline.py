"""Object detection: dvis FCOS on the DynamicVis FPN vs torchvision Faster R-CNN ResNet-50-FPN,
same data, same wall-clock budget, same loop.

Both detectors read the same crops through dvis's own data pipeline
(:class:`dynamicvis_cli.data.dataset.TaskDataset`: same tiles, augmentation, normalisation and
batch order), train with the same AdamW (lr, weight decay, linear warm-up then constant rate) for
the same number of seconds on the same machine, and are scored the same way: COCO AP on the
tiles of a validation set and of a held-out test set (:func:`dynamicvis_cli.evaluate.tasks.evaluate_model`,
the code behind ``dvis evaluate``). A wall-clock budget rather than a step budget: on a CPU a
ResNet-50 step costs several dvis-tiny steps, and the question an analyst asks is what each
model reaches in the time they have.

Starting weights: ``dvis-tiny`` random; ``dvis-tiny@<model>`` the trunk of a released or
fine-tuned dvis model (its FPN and head random), e.g. ``dvis-tiny@tiny.dubai-landcover``;
``frcnn-r50`` torchvision's ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)``
(ImageNet weights cannot be downloaded here). Faster R-CNN's own transform only pads (images
arrive normalised; min/max size = the tile), as dvis's FCOS does.

Usage (the files come from ``scripts/prepare_release_data.py``)::

    python benchmarks/detect_baseline.py --data /tmp/release-data/detect/train.json \\
        --val-data /tmp/release-data/detect/val.json --test-data /tmp/release-data/detect/marina.json \\
        --models dvis-tiny,frcnn-r50 --seconds 1200 --out benchmarks/results/detect-baseline-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynamicvis_cli.checkpoints.config import IMAGENET_MEAN, IMAGENET_STD
from dynamicvis_cli.data.augment import AugmentConfig
from dynamicvis_cli.data.dataset import TaskDataset
from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.data.records import DatasetSpec
from dynamicvis_cli.evaluate.tasks import evaluate_model
from dynamicvis_cli.train.hooks import ProgressFeed
from dynamicvis_cli.train.optim import build_optimizer, set_lr
from dynamicvis_cli.train.step import detection_targets

sys.path.insert(0, str(Path(__file__).parent))
from baseline_loop import (
    Budget,
    batch_stream,
    new_report,
    optimise,
    parameters_m,
    run_models,
    train_for,
)


class TorchvisionDetector(nn.Module):
    """A torchvision detector with the interface of :class:`dynamicvis_cli.nn.tasks.Detector`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        return self.net(images, targets)

    def predict(self, x: Tensor) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = self.net(list(x))
        return out


def build(name: str, classes: list[str], tile: int) -> tuple[nn.Module, ProgressFeed | None, str]:
    """The detector called ``name``, the router's progress feed (dvis: the Gumbel noise of a
    ``decay`` schedule, as ``dvis finetune`` feeds it) and a description of its starting weights."""
    torch.manual_seed(0)
    if name == "frcnn-r50":
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        net = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=len(classes) + 1,
                                      min_size=tile, max_size=tile, image_mean=[0.0] * 3, image_std=[1.0] * 3)
        return TorchvisionDetector(net), None, "random (seed 0)"
    if name == "dvis-tiny" or name.startswith("dvis-tiny@"):
        from dynamicvis_cli.train.model import build_for_training, trunk_of

        start = name.partition("@")[2] or "tiny"
        net, _, weights = build_for_training(start, "detect", classes, in_chans=3, tile_size=tile)
        return net, ProgressFeed(trunk_of(net).backbone), f"{start}: {weights}"
    raise SystemExit(f"unknown model {name}: dvis-tiny, dvis-tiny@<model> or frcnn-r50")


def read(path: Path) -> DatasetSpec:
    return open_dataset(path, "detect")


def score(model: nn.Module, spec: DatasetSpec, tile: int) -> dict[str, Any]:
    ds = TaskDataset(spec, tile_size=tile, bands=[1, 2, 3], mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=None)
    m = evaluate_model(model, ds, spec.classes, device=torch.device("cpu"))
    keep = ("ap", "ap50", "ap75", "ap_small", "ar100", "per_class_ap50", "targets", "detections", "tiles")
    return {k: m[k] for k in keep if k in m}


def train(name: str, spec: DatasetSpec, val: DatasetSpec, test: DatasetSpec | None,
          args: argparse.Namespace) -> dict[str, Any]:
    model, feed, start = build(name, spec.classes, args.tile_size)
    budget = Budget(seconds=args.seconds)
    params = parameters_m(model)
    ds = TaskDataset(spec, tile_size=args.tile_size, bands=[1, 2, 3], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     augment=AugmentConfig(), seed=args.seed)
    batches = batch_stream(ds, batch_size=args.batch_size, seed=args.seed, workers=args.workers)
    opt = build_optimizer(model, args.lr, args.weight_decay)
    model.train()

    def step(i: int, elapsed: float) -> float:
        if feed is not None:
            feed.value = budget.progress(i, elapsed)
        set_lr(opt, args.lr * min(1.0, (i + 1) / args.warmup_steps))
        batch = next(batches)
        loss = sum(model(list(batch["image"]), detection_targets(batch)).values())
        optimise(opt, loss, model.parameters(), args.grad_clip)
        return float(loss.detach())

    log = train_for(budget, step, name=name)
    model.eval()
    t1 = time.perf_counter()
    result: dict[str, Any] = {"model": name, "weights": start, "parameters_m": params, **log.summary(),
                              "val": score(model, val, args.tile_size)}
    if test is not None:
        result["test"] = score(model, test, args.tile_size)
    result["eval_seconds"] = round(time.perf_counter() - t1, 1)
    print(f"{name}: {len(log.losses)} steps, val AP50 {result['val']['ap50']:.3f}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="training detection set (COCO .json, folder)")
    ap.add_argument("--val-data", type=Path, required=True)
    ap.add_argument("--test-data", type=Path, default=None, help="held-out set, scored once at the end")
    ap.add_argument("--models", default="dvis-tiny,frcnn-r50")
    ap.add_argument("--seconds", type=float, default=1200, help="training wall-clock budget per model")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for p in (args.data, args.val_data, args.test_data):
        if p is not None and not p.exists():
            print(f"error: {p}: no such file (run scripts/prepare_release_data.py)", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    spec, val = read(args.data), read(args.val_data)
    test = read(args.test_data) if args.test_data is not None else None
    report = new_report(
        "detect_baseline",
        data={"train": str(args.data), "val": str(args.val_data), "test": str(args.test_data),
              "train_images": len(spec.records), "val_images": len(val.records),
              "classes": spec.classes},
        budget={"seconds_per_model": args.seconds, "tile": args.tile_size, "batch_size": args.batch_size,
                "optimizer": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
                "schedule": f"linear warm-up {args.warmup_steps} steps, then constant",
                "grad_clip": args.grad_clip,
                "augment": "dvis defaults (flips, rot90, scale 0.75-1.33, colour)"},
        scoring="COCO AP over the tiles of each image (dvis evaluate's protocol)",
    )
    run_models(report, args.models, lambda name: train(name, spec, val, test, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
