"""The fine-tuning loop: data checked up front, AdamW + warm-up/cosine, AMP, accumulation, DDP,
checkpoints and resume, JSONL/CSV logs; the run folder ends as an inference-ready checkpoint.

Determinism: the model is initialised from ``seed``; the order of items in epoch ``e`` and
each item's augmentation depend only on (seed, e, item); before each optimiser step the torch
RNG (router noise, dropout, token drop) is reseeded from (seed, step, rank). So a resumed run
repeats an uninterrupted one, and with the router noise off, N processes repeat one process
with the same global batch (up to floating-point summation order).
"""

from __future__ import annotations

import datetime
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dynamicvis_cli._version import __version__
from dynamicvis_cli.checkpoints.config import CONFIG_NAME, WEIGHTS_NAME
from dynamicvis_cli.checkpoints.registry import resolve as resolve_model
from dynamicvis_cli.data.dataset import TaskDataset, collate
from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.data.records import DatasetSpec
from dynamicvis_cli.errors import DvisUsageError, OutputExistsError
from dynamicvis_cli.geo.atomic import atomic_output
from dynamicvis_cli.infer.runner import resolve_device
from dynamicvis_cli.train import checkpoint as ckpt
from dynamicvis_cli.train.config import DEFAULT_EPOCHS, TrainConfig, resolve
from dynamicvis_cli.train.distributed import (DistInfo, barrier, count_batchnorm, from_sync_batchnorm,
                                              init_distributed, shutdown, to_sync_batchnorm,
                                              wants_sync_bn)
from dynamicvis_cli.train.hooks import ProgressFeed, TokenDrop, freeze_stages
from dynamicvis_cli.train.logs import RunLog
from dynamicvis_cli.train.model import build_for_training, export_config
from dynamicvis_cli.train.optim import build_optimizer
from dynamicvis_cli.train.step import TrainModule
from dynamicvis_cli.train.stepper import Stepper
from dynamicvis_cli.train.validate import evaluate

Logger = Callable[[str], None]
StepHook = Callable[[int, dict[str, Any]], None]


def _open(cfg: TrainConfig, path: str | None, classes: list[str] | None) -> DatasetSpec:
    assert path is not None
    return open_dataset(path, cfg.task, format=cfg.format, classes=classes, palette=cfg.palette,
                        image_root=cfg.image_root, check_masks=cfg.check_masks, geo=cfg.geo)


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, DatasetSpec, DatasetSpec | None]:
    """Resolve the config against the model and open (and check) the datasets: everything that
    can fail on bad input, before any weight is built."""
    if not cfg.data:
        raise DvisUsageError("no training data: give --data (or data: in the config)")
    mcfg, _ = resolve_model(cfg.model)
    in_chans = len(cfg.bands) if cfg.bands else mcfg.backbone.in_chans
    cfg = resolve(cfg, model_tile=mcfg.tile_size, model_mean=mcfg.mean, model_std=mcfg.std, in_chans=in_chans,
                  model_bands=mcfg.band_indexes)
    spec = _open(cfg, cfg.data, cfg.classes)
    assert cfg.bands is not None
    spec.check_bands(cfg.bands)
    cfg.classes = list(spec.classes)
    val = None
    if cfg.val_data:
        val = _open(cfg, cfg.val_data, spec.classes)
        val.check_bands(cfg.bands)
    return cfg, spec, val


def _prepare_out(out: Path, cfg: TrainConfig, info: DistInfo) -> Path | None:
    """Refuse to clobber a finished or started run unless --overwrite; find the resume point.

    ``--resume`` in a folder whose run stopped before its first checkpoint starts afresh."""
    resume = ckpt.find_resume(out, cfg.resume)
    if info.main and resume is None:
        started = [p for p in (out / CONFIG_NAME, out / ckpt.CHECKPOINTS, out / "log.jsonl") if p.exists()]
        if started and not cfg.overwrite and not cfg.resume:
            raise OutputExistsError(f"{out} (a training run is there; --resume to continue it)")
        for p in started + [out / WEIGHTS_NAME, out / "log.csv", out / "train.yaml", out / "summary.json"]:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)
    return resume


def epoch_order(seed: int, epoch: int, n: int, needed: int) -> np.ndarray:
    """Item order of an epoch: permutations seeded by (seed, epoch), repeated to ``needed`` items."""
    parts: list[np.ndarray] = []
    k = 0
    while sum(len(p) for p in parts) < needed:
        parts.append(np.random.default_rng([seed, epoch, k]).permutation(n))
        k += 1
    return np.concatenate(parts)[:needed]


@dataclass
class BatchPlan:
    """This rank's micro-batches of ``(epoch, item)`` keys for optimiser steps ``start..stop-1``.

    Step ``s`` of epoch ``e`` takes items ``[s·B, (s+1)·B)`` of :func:`epoch_order`; its ``accum``
    micro-batches are consecutive slices of B/accum, each split evenly over the ranks. The keys
    depend on nothing but the seed, so 1 or N processes, and a resumed run, see the same items.
    """

    seed: int
    items: int
    batch_size: int
    accum: int
    steps_per_epoch: int
    start: int
    stop: int
    rank: int = 0
    world: int = 1

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro = self.batch_size // self.accum
        per_rank = micro // self.world
        order, order_epoch = np.zeros(0, dtype=np.int64), -1
        for step in range(self.start, self.stop):
            epoch, pos = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order = epoch_order(self.seed, epoch, self.items, self.steps_per_epoch * self.batch_size)
                order_epoch = epoch
            chunk = order[pos * self.batch_size:(pos + 1) * self.batch_size]
            for m in range(self.accum):
                part = chunk[m * micro:(m + 1) * micro][self.rank * per_rank:(self.rank + 1) * per_rank]
                yield [(epoch, int(i)) for i in part]


def fit(cfg: TrainConfig, *, log: Logger | None = None, on_step: StepHook | None = None) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says; returns the run's summary (also written to OUT/summary.json).

    Raises:
        DvisUsageError, DatasetError: bad config or data (before training starts).
    """
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        return _fit(cfg, device, info, log or (lambda s: None), on_step)
    finally:
        shutdown(info)


def _fit(cfg: TrainConfig, device: torch.device, info: DistInfo, log: Logger,
         on_step: StepHook | None) -> dict[str, Any]:
    start = time.perf_counter()
    if not cfg.out:
        raise DvisUsageError("no output folder: give -o/--out")
    out = Path(cfg.out)
    cfg, spec, val_spec = prepare(cfg)
    assert cfg.tile_size is not None and cfg.bands is not None
    assert cfg.mean is not None and cfg.std is not None
    assert cfg.lr is not None and cfg.freeze_stages is not None
    per_rank, rest = divmod(cfg.batch_size, info.world * cfg.accum)
    if per_rank < 1 or rest:
        raise DvisUsageError(f"batch_size {cfg.batch_size} does not split into {info.world} process(es) "
                             f"x {cfg.accum} accumulation step(s); make it a multiple of "
                             f"{info.world * cfg.accum}")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise DvisUsageError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    sync_bn = wants_sync_bn(cfg.sync_bn, device, info)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    resume_from = _prepare_out(out, cfg, info)

    train_ds = TaskDataset(spec, tile_size=cfg.tile_size, bands=cfg.bands, mean=cfg.mean, std=cfg.std,
                           augment=cfg.augment, seed=cfg.seed, repeat=cfg.repeat)
    steps_per_epoch = max(1, len(train_ds) // cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else int(cfg.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(0.05 * total))

    torch.manual_seed(cfg.seed)
    net, mconfig, weights = build_for_training(cfg.model, cfg.task, spec.classes, in_chans=len(cfg.bands),
                                               tile_size=cfg.tile_size, scan_backend=cfg.scan_backend)
    trunk: Any = net.trunk
    trunk.backbone.gumbel_schedule = cfg.gumbel_schedule
    frozen = freeze_stages(trunk.backbone, cfg.freeze_stages)
    module = TrainModule(cfg.task, net, len(spec.classes), aux_weight=cfg.aux_weight,
                         dice_weight=cfg.dice_weight,
                         head_channels=int(mconfig.head.get("channels", 256))).to(device)
    feed = ProgressFeed(trunk.backbone)
    if cfg.token_drop > 0:
        TokenDrop(trunk.backbone, cfg.token_drop)
    module.train()
    optimizer = build_optimizer(module, cfg.lr, cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None

    step0 = 0
    if resume_from is not None:
        step0 = ckpt.restore_training(resume_from, model=net, aux=module.aux, optimizer=optimizer,
                                      scaler=scaler)
        log(f"resuming from {resume_from} at step {step0}")
    runlog = RunLog(out, enabled=info.main, resume_step=step0 if resume_from is not None else None)
    if info.main:
        with atomic_output(out / "train.yaml", overwrite=True) as tmp:
            tmp.write_text(cfg.to_yaml(), encoding="utf-8")

    wrapped: torch.nn.Module = module
    sync_bn = sync_bn and count_batchnorm(module) > 0
    if sync_bn:  # BatchNorm statistics over the global batch; converted back after training
        log(f"sync_bn: {count_batchnorm(module)} BatchNorm layers synchronised over {info.world} processes")
        to_sync_batchnorm(module)
    if info.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.task in ("detect", "instance"))
    if weights.get("trunk") == "random":
        log(f"warning: {cfg.model} has no weights: training from scratch (random initialisation); "
            "start from a pretrained checkpoint with -m for a real fine-tune")
    log(f"training {cfg.task} on {len(spec.records)} images ({spec.format}), classes {spec.classes}; "
        f"{total} steps x batch {cfg.batch_size}, {info.world} process(es); weights {weights}")

    provenance = {"finetuned_from": str(cfg.model), "finetune_data": str(cfg.data),
                  "finetune_format": spec.format, "trainer": f"dvis {__version__}",
                  "weights": "fine-tuned (dvis finetune)"}

    bands, mean, std, tile = cfg.bands, cfg.mean, cfg.std, cfg.tile_size

    def model_config(step: int, loss: float | None) -> Any:
        return export_config(mconfig, classes=spec.classes, bands=bands, mean=mean, std=std,
                             tile_size=tile, gumbel_schedule=cfg.gumbel_schedule,
                             provenance={**provenance, "finetune_steps": step, "finetune_final_loss": loss,
                                         "finetune_date": datetime.date.today().isoformat()})

    def save(step: int, loss: float | None) -> None:
        if info.main:
            ckpt.save_training(out, step, model_state=net.state_dict(), config=model_config(step, loss),
                               optimizer=optimizer,
                               aux_state=module.aux.state_dict() if module.aux is not None else None,
                               trainer={"scaler": scaler.state_dict() if scaler is not None else None,
                                        "total_steps": total, "config": cfg.to_dict()},
                               keep=cfg.keep_checkpoints)
        barrier(info)

    plan = BatchPlan(seed=cfg.seed, items=len(train_ds), batch_size=cfg.batch_size, accum=cfg.accum,
                     steps_per_epoch=steps_per_epoch, start=step0, stop=total, rank=info.rank, world=info.world)
    # one loader for the whole run: its workers live as long as the run, not one epoch
    batches = iter(DataLoader(train_ds, batch_sampler=plan, num_workers=cfg.workers, collate_fn=collate,
                              pin_memory=device.type == "cuda", persistent_workers=False))
    history: list[float] = []
    last_row: dict[str, Any] = {}
    val_metrics: dict[str, Any] | None = None
    window: list[dict[str, float]] = []
    stepper = Stepper(module=module, wrapped=wrapped, optimizer=optimizer, scaler=scaler, feed=feed, info=info,
                      device=device, seed=cfg.seed, lr=cfg.lr, total=total, warmup=warmup,
                      min_lr_ratio=cfg.min_lr_ratio, accum=cfg.accum, precision=cfg.precision,
                      grad_clip=cfg.grad_clip)
    for step in range(step0, total):
        window.append(stepper.step(step, batches))
        done = step + 1
        if done % cfg.log_every == 0 or done == total or done == step0 + 1:
            last_row = stepper.row(window, done, steps_per_epoch, start)
            window = []
            history.append(last_row["loss"])
            runlog.write(last_row)
            log(f"step {done}/{total} loss {last_row['loss']:.4f} lr {last_row['lr']:.2e}")
        if val_spec is not None and cfg.eval_every and done % cfg.eval_every == 0 and done != total:
            val_metrics = _validate(cfg, net, val_spec, device, info)
            if val_metrics is not None:
                runlog.write({"step": done, **{f"val_{k}": v for k, v in val_metrics.items()}})
        if (cfg.save_every and done % cfg.save_every == 0) or done == total:
            save(done, last_row.get("loss"))
        if on_step is not None:
            on_step(done, dict(last_row))

    if sync_bn:
        from_sync_batchnorm(module)  # the same tensors and state-dict keys, as plain BatchNorm2d
    if val_spec is not None:
        val_metrics = _validate(cfg, net, val_spec, device, info)
        if val_metrics is not None:
            runlog.write({"step": total, **{f"val_{k}": v for k, v in val_metrics.items()}})
    final_loss = history[-1] if history else None
    summary = {
        "command": "finetune", "task": cfg.task, "out": str(out), "model": str(cfg.model),
        "weights_from": weights,
        "data": str(cfg.data), "format": spec.format, "images": len(spec.records), "classes": spec.classes,
        "steps": total, "resumed_from_step": step0 if resume_from is not None else None,
        "batch_size": cfg.batch_size, "processes": info.world, "frozen_parameters": len(frozen),
        "first_loss": history[0] if history else None, "final_loss": final_loss,
        "val": val_metrics, "wall_s": round(time.perf_counter() - start, 2),
    }
    if info.main:
        ckpt.save_final(out, net.state_dict(), model_config(total, final_loss))
        import json

        with atomic_output(out / "summary.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    barrier(info)
    return summary


def _validate(cfg: TrainConfig, net: torch.nn.Module, spec: DatasetSpec, device: torch.device,
              info: DistInfo) -> dict[str, Any] | None:
    """Validation metrics, computed on rank 0 (the others wait)."""
    result = None
    if info.main:
        assert cfg.tile_size is not None and cfg.bands is not None
        assert cfg.mean is not None and cfg.std is not None
        ds = TaskDataset(spec, tile_size=cfg.tile_size, bands=cfg.bands, mean=cfg.mean, std=cfg.std,
                         augment=None)
        result = evaluate(net, ds, spec.classes, device=device, precision=cfg.precision)
    barrier(info)
    return result


__all__ = ["DEFAULT_EPOCHS", "fit", "prepare"]
