"""Land-cover segmentation: dvis ``tiny`` + UperNet vs torchvision DeepLabV3-ResNet-50.

Both are trained the way the released ``tiny.dubai-landcover`` was, for the same wall-clock
time. Both segmenters read the same crops through dvis's own data pipeline
(:class:`dynamicvis_cli.data.dataset.TaskDataset` over the colour masks decoded with the Dubai
palette: same tiles, same order as ``dvis finetune``, dvis's default augmentation, ImageNet
normalisation) and train as ``dvis finetune --task segment`` trained the release (its
``MODEL_CARD.md``): AdamW (dvis's ``build_optimizer``: no decay on biases and norms), lr 2e-3,
weight decay 0.05, batch 8, 256-px tiles, linear warm-up over the first 5 % of the budget then a
cosine down to 1 % of the rate, no gradient clipping, the torch RNG reseeded before each step,
and the same loss: pixel cross-entropy (labels' ignore index skipped) + 0.4 x that of an
auxiliary FCN head on the third stage, used in training only. dvis-tiny trains through
:class:`dynamicvis_cli.train.step.TrainModule` itself (its aux head on stage 3, the router's
noise decaying with progress); DeepLabV3 through the same two calls of dvis's ``upsample_to`` and
``cross_entropy`` on its ``out`` (ASPP head) and ``aux`` (torchvision's FCN head on layer3).
The budget is wall-clock (``--seconds``; the schedule's progress is elapsed / budget): on a CPU
a ResNet-50 step costs many dvis-tiny steps, and the question is what each model reaches in the
time the release took (2,330 s). ``--steps`` gives a step budget instead, on ``dvis finetune``'s
own schedule (checked: ``--steps 3 --models dvis-tiny`` logs the same loss at every step as
``dvis finetune`` on the same data). Note that the release's 2,330 s bought 300 steps on a busy
2-core machine (evaluations and checkpoints included); a dvis-tiny step now takes about 1.3 s on
one thread, so the same seconds give dvis-tiny several times the release's steps: the
release's own result is its card's, or ``--steps 300 --models dvis-tiny``.

Scoring: once, at the end, on the held-out set (Dubai Tile 6) with
:func:`dynamicvis_cli.evaluate.tasks.evaluate_model`, the code behind ``dvis evaluate --task
segment`` (a grid of 256-px tiles, no augmentation): mIoU, pixel accuracy, macro precision /
recall / F1 and per-class IoU.

Starting weights: ``dvis-tiny`` random (as the release); ``dvis-tiny@<model>`` a released or
fine-tuned dvis model (a segmenter with these classes continues training, another model gives
its trunk), e.g. ``dvis-tiny@tiny.dubai-landcover``; ``deeplabv3-r50`` torchvision's
``deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)`` (ImageNet weights
cannot be downloaded here). Training data: one or more ``--data`` folders in the ``masks``
layout (``images/`` + ``masks/``, or folders of them, e.g. the Dubai ``Tile N`` folders),
read in the order given. A folder of symlinks to whole Tile folders finds nothing (the search
for ``images/`` folders does not enter symlinked folders); link ``Tile N/images`` and ``Tile
N/masks`` into a real ``Tile N`` folder instead, or give the Tile folders themselves.

Usage (the release's data: Tiles 1, 2, 3, 4, 7, 8 to train, Tile 6 held out)::

    echo '{"building": "#3C1098", "land": "#8429F6", "road": "#6EC1E4", "vegetation": "#FEDD3A",
          "water": "#E2A929", "ignore": ["#9B9B9B", "#000000"]}' > /tmp/palette.json
    python benchmarks/segment_baseline.py --data ../shared/data/dubai/Tile\\ {1,2,3,4,7,8} \\
        --val-data "../shared/data/dubai/Tile 6" --palette /tmp/palette.json \\
        --models dvis-tiny,deeplabv3-r50 --seconds 2330 --workers 1 \\
        --out benchmarks/results/segment-baseline-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamicvis_cli.checkpoints.config import IMAGENET_MEAN, IMAGENET_STD
from dynamicvis_cli.data.augment import AugmentConfig
from dynamicvis_cli.data.dataset import TaskDataset
from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.data.records import DatasetSpec
from dynamicvis_cli.errors import DatasetError
from dynamicvis_cli.evaluate.tasks import evaluate_model
from dynamicvis_cli.train.hooks import ProgressFeed
from dynamicvis_cli.train.losses import cross_entropy, upsample_to
from dynamicvis_cli.train.optim import build_optimizer, set_lr
from dynamicvis_cli.train.step import TrainModule

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

AUX_WEIGHT = 0.4  # dvis finetune's aux_weight (TrainConfig), as the release used
WARMUP, MIN_LR_RATIO = 0.05, 0.01  # dvis finetune's warm-up (5 % of the steps) and cosine floor


class TorchvisionSegmenter(nn.Module):
    """A torchvision ``_SimpleSegmentationModel`` (backbone + classifier; its auxiliary head is
    kept by :class:`AuxTrainModule`, as dvis keeps its own out of the exported model) with the
    interface of :class:`dynamicvis_cli.nn.tasks.Segmenter`: ``forward`` gives the logits at the
    head's resolution (stride 8 here), ``predict`` at the input's."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.classifier = net.classifier

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.backbone(x)["out"])
        return out

    def predict(self, x: Tensor) -> Tensor:
        return F.interpolate(self(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class AuxTrainModule(nn.Module):
    """:class:`TrainModule`'s segment loss for a torchvision segmenter: CE of the main logits +
    ``aux_weight`` x CE of the auxiliary head's (on the backbone's ``aux`` map, layer3), each
    upsampled to the mask with dvis's ``upsample_to`` and scored with its ``cross_entropy``."""

    def __init__(self, model: TorchvisionSegmenter, aux: nn.Module, aux_weight: float) -> None:
        super().__init__()
        self.model = model
        self.aux = aux
        self.aux_weight = aux_weight

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        features = self.model.backbone(batch["image"])
        logits = upsample_to(self.model.classifier(features["out"]), batch["mask"])
        main = cross_entropy(logits, batch["mask"])
        aux = cross_entropy(upsample_to(self.aux(features["aux"]), batch["mask"]), batch["mask"])
        return {"loss": main + self.aux_weight * aux, "ce": main.detach(), "aux": aux.detach()}


def build(name: str, classes: list[str], tile: int,
          seed: int) -> tuple[nn.Module, nn.Module, ProgressFeed | None, str]:
    """(the segmenter evaluated, the train module whose ``forward(batch)`` gives the loss, the
    router's progress feed (dvis) and a description of the starting weights)."""
    torch.manual_seed(seed)  # as dvis finetune, before the model is built
    if name == "deeplabv3-r50":
        from torchvision.models.segmentation import deeplabv3_resnet50

        net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=len(classes),
                                 aux_loss=True)
        model = TorchvisionSegmenter(net)
        train_module = AuxTrainModule(model, net.aux_classifier, AUX_WEIGHT)
        return model, train_module, None, f"random (seed {seed})"
    if name == "dvis-tiny" or name.startswith("dvis-tiny@"):
        from dynamicvis_cli.train.model import build_for_training

        start = name.partition("@")[2] or "tiny"
        net, config, weights = build_for_training(start, "segment", classes, in_chans=3,
                                                  tile_size=tile)
        trunk: Any = net.trunk
        trunk.backbone.gumbel_schedule = "decay"  # dvis finetune's default
        module = TrainModule("segment", net, len(classes), aux_weight=AUX_WEIGHT,
                             head_channels=int(config.head.get("channels", 256)))
        return net, module, ProgressFeed(trunk.backbone), f"{start}: {weights}"
    raise SystemExit(f"unknown model {name}: dvis-tiny, dvis-tiny@<model> or deeplabv3-r50")


def read(paths: list[Path], palette: str, classes: list[str] | None = None) -> DatasetSpec:
    """The image/mask pairs of every folder in ``paths``, in that order, as one dataset."""
    specs = [open_dataset(p, "segment", classes=classes, palette=palette) for p in paths]
    first = specs[0]
    return DatasetSpec(first.root, first.format, "segment", first.classes,
                       [r for s in specs for r in s.records], coding=first.coding,
                       bands=first.bands)


def score(model: nn.Module, spec: DatasetSpec, tile: int) -> dict[str, Any]:
    ds = TaskDataset(spec, tile_size=tile, bands=[1, 2, 3], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     augment=None)
    m = evaluate_model(model, ds, spec.classes, device=torch.device("cpu"))
    return {"miou": m["miou"], "pixel_accuracy": m["accuracy"], "precision_macro": m["precision"],
            "recall_macro": m["recall"], "f1_macro": m["f1"],
            "per_class_iou": {k: v["iou"] for k, v in m["per_class"].items()},
            "per_class_pixels": {k: v["support"] for k, v in m["per_class"].items()},
            "tiles": len(ds), "pixels": m["count"]}


def train(name: str, spec: DatasetSpec, val: DatasetSpec, budget: Budget,
          args: argparse.Namespace) -> dict[str, Any]:
    model, module, feed, start = build(name, spec.classes, args.tile_size, args.seed)
    ds = TaskDataset(spec, tile_size=args.tile_size, bands=[1, 2, 3], mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, augment=AugmentConfig(), seed=args.seed)
    batches = batch_stream(ds, batch_size=args.batch_size, seed=args.seed, workers=args.workers)
    opt = build_optimizer(module, args.lr, args.weight_decay)  # the aux head trains too
    module.train()
    parts: dict[str, float] = {}

    def step(i: int, elapsed: float) -> float:
        torch.manual_seed((args.seed * 1_000_003 + i) * 1009)  # as dvis finetune (one process)
        if feed is not None:
            feed.value = budget.progress(i, elapsed)
        set_lr(opt, args.lr * budget.lr_factor(i, elapsed, warmup=WARMUP, min_ratio=MIN_LR_RATIO))
        result = module(next(batches))
        loss = result["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)}")
        optimise(opt, loss, [p for p in module.parameters() if p.requires_grad], args.grad_clip)
        for k in ("ce", "aux"):
            parts[k] = float(result[k])
        return float(loss.detach())

    log = train_for(budget, step, name=name, log_every=args.log_every)
    t1 = time.perf_counter()
    result: dict[str, Any] = {"model": name, "weights": start,
                              "parameters": sum(p.numel() for p in model.parameters()),
                              "parameters_m": parameters_m(model),
                              "train_parameters_m": parameters_m(module), **log.summary(),
                              "last_loss": round(log.losses[-1], 4) if log.losses else None,
                              "last_loss_parts": {k: round(v, 4) for k, v in parts.items()},
                              "val": score(model, val, args.tile_size)}
    result["eval_seconds"] = round(time.perf_counter() - t1, 1)
    print(f"{name}: {len(log.losses)} steps, val mIoU {result['val']['miou']:.3f}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True,
                    help="training folder(s) of images/ + masks/ (e.g. the Dubai 'Tile N' folders)")
    ap.add_argument("--val-data", type=Path, required=True,
                    help="held-out folder, scored once at the end")
    ap.add_argument("--palette", required=True,
                    help="colour masks: JSON/YAML file mapping class names to #RRGGBB "
                         "(as dvis --palette)")
    ap.add_argument("--models", default="dvis-tiny,deeplabv3-r50")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=None,
                        help="training wall-clock budget per model "
                             "(default 2330: the release's time)")
    budget.add_argument("--steps", type=int, default=None, help="optimiser steps per model instead")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--grad-clip", type=float, default=None,
                    help="clip the gradient norm (default: off, as dvis finetune)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for p in (*args.data, args.val_data, Path(args.palette)):
        if not p.exists():
            print(f"error: {p}: no such file or folder", file=sys.stderr)
            return 2
    for name in args.models.split(","):
        name = name.strip()
        if name not in ("dvis-tiny", "deeplabv3-r50") and not name.startswith("dvis-tiny@"):
            print(f"error: unknown model {name}: dvis-tiny, dvis-tiny@<model> or deeplabv3-r50",
                  file=sys.stderr)
            return 2
    if args.steps is None and args.seconds is None:
        args.seconds = 2330.0
    budget = Budget(seconds=args.seconds, steps=args.steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        spec = read(args.data, args.palette)
        val = read([args.val_data], args.palette, spec.classes)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    schedule = (f"linear warm-up over the first {WARMUP:.0%} of the budget, then cosine to "
                f"{MIN_LR_RATIO:.0%} of lr")
    schedule += (" (progress = elapsed / budget)" if args.steps is None
                 else " (dvis finetune's lr_factor)")
    report = new_report(
        "segment_baseline",
        data={"train": [str(p) for p in args.data], "val": str(args.val_data),
              "palette": args.palette, "train_images": len(spec.records),
              "val_images": len(val.records), "classes": spec.classes},
        budget={**budget.describe(), "tile": args.tile_size, "batch_size": args.batch_size,
                "optimizer": "AdamW (dvis build_optimizer)", "lr": args.lr,
                "weight_decay": args.weight_decay, "schedule": schedule,
                "grad_clip": args.grad_clip,
                "loss": f"pixel CE + {AUX_WEIGHT} x CE of an auxiliary FCN head on stage 3 "
                        "(layer3)",
                "augment": "dvis defaults (flips, rot90, scale 0.75-1.33, colour 0.1)"},
        scoring="dvis evaluate --task segment on the val set: a grid of tiles, no augmentation",
    )
    run_models(report, args.models, lambda name: train(name, spec, val, budget, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
