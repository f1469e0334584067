"""``dvis pretrain``: meta-embedding multi-instance pretraining on region-annotated imagery.

The model trained is a region classifier (:class:`~dynamicvis_cli.nn.tasks.RegionClassifier`:
backbone + FPN, every box pooled from all FPN levels, LayerNorm, linear) with the MIL-NCE +
cross-entropy objective of :mod:`dynamicvis_cli.train.meta` against learnable category
embeddings. It shares the fine-tuning machinery: the model builder, AdamW + warm-up/cosine, AMP,
gradient accumulation, the router-noise progress feed, token drop, DDP (torchrun), checkpoints
every N steps with ``--resume``, JSONL/CSV logs.

Data: WebDataset shards written by ``dvis data shard`` (paths, globs, brace patterns or the
shard folder), streamed with a shuffle buffer and no index in memory, shards split over ranks
and loader workers; or any detection dataset ``dvis finetune`` reads (read as in finetune).

The run folder ends as:

* ``OUT/config.json`` + ``OUT/model.safetensors``: the pretrained **backbone + FPN**, a backbone
  checkpoint every command takes (``dvis finetune -m OUT``, ``dvis index build -m OUT``; task
  commands with a fresh head);
* ``OUT/region/``: the region classifier over the pretraining categories (``dvis classify
  --regions``, ``dvis evaluate --task region``);
* ``OUT/meta_embeddings.safetensors``: the learnt category embeddings (tensor ``embeddings``
  with the names in its metadata, the format ``--embeddings`` reads back).

Streaming and resume: a resumed run continues the step count, optimiser and learning-rate
schedule exactly, and restarts the stream at the epoch it was in with a fresh shuffle, so it is
statistically, not bitwise, the run it continues (a finite dataset that is not sharded is
resumed exactly, as in finetune).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dynamicvis_cli._version import __version__
from dynamicvis_cli.checkpoints.registry import resolve as resolve_model
from dynamicvis_cli.data.dataset import TaskDataset, collate
from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.geo.atomic import atomic_output
from dynamicvis_cli.infer.runner import resolve_device
from dynamicvis_cli.train import checkpoint as ckpt
from dynamicvis_cli.train.config import TrainConfig, resolve
from dynamicvis_cli.train.distributed import DistInfo, barrier, init_distributed, shutdown
from dynamicvis_cli.train.hooks import ProgressFeed, TokenDrop, freeze_stages
from dynamicvis_cli.train.logs import RunLog
from dynamicvis_cli.train.loop import BatchPlan, _prepare_out
from dynamicvis_cli.train.meta import MetaEmbeddingLoss, load_embeddings
from dynamicvis_cli.train.model import build_for_training, export_config
from dynamicvis_cli.train.optim import build_optimizer
from dynamicvis_cli.train.stepper import Stepper

Logger = Callable[[str], None]


@dataclass
class PretrainConfig(TrainConfig):
    """A fine-tuning config (see :class:`TrainConfig`) plus what pretraining adds.

    Attributes:
        embeddings: file of initial category embeddings (``.safetensors``/``.npz``/``.npy`` +
            ``.txt``); random when None.
        ce_weight: weight of the region classifier's cross-entropy beside MIL-NCE.
        temperature: initial temperature of the similarity (the logit scale is learnt).
        shuffle: streaming shuffle buffer (samples).
        steps_per_epoch: optimiser steps per pass over the data (default: from the shard counts).
    """

    task: str = "region"
    lr: float | None = 4e-4
    freeze_stages: int | None = 0
    embeddings: str | None = None
    ce_weight: float = 1.0
    temperature: float = 0.07
    shuffle: int = 1000
    steps_per_epoch: int | None = None


def is_shards(data: str) -> bool:
    """Whether ``data`` names WebDataset shards (a .tar, a pattern, or a folder of shards)."""
    p = Path(data)
    if any(ch in data for ch in "{*?") or "::" in data or data.endswith(".tar"):
        return True
    return p.is_dir() and ((p / "dataset.json").is_file() or any(p.glob("*.tar")))


class PretrainModule(nn.Module):
    """The region classifier and the meta-embedding loss; ``forward(batch)`` → loss parts."""

    def __init__(self, net: nn.Module, meta: MetaEmbeddingLoss) -> None:
        super().__init__()
        self.net = net
        self.meta = meta

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        net: Any = self.net
        fpn = net.trunk(batch["image"]).fpn
        pooled = net.head.pooled(fpn, batch["boxes"])
        logits = net.head.fc(pooled)
        labels = torch.cat(batch["labels"]) if batch["labels"] else torch.zeros(0, dtype=torch.int64)
        return dict(self.meta(pooled, logits, labels.to(pooled.device)))


class _Source:
    """Micro-batches for this rank, forever: a shard stream or a finite dataset."""

    def __init__(self, cfg: PretrainConfig, info: DistInfo, device: torch.device, log: Logger) -> None:
        assert cfg.tile_size is not None and cfg.bands is not None and cfg.mean is not None
        assert cfg.std is not None and cfg.data is not None
        self.cfg, self.info, self.device = cfg, info, device
        self.micro = cfg.batch_size // (cfg.accum * info.world)
        self.stream = None
        self.dataset: TaskDataset | None = None
        if is_shards(cfg.data):
            from dynamicvis_cli.data.shards import ShardStream

            self.stream = ShardStream(cfg.data, classes=cfg.classes, tile_size=cfg.tile_size, bands=cfg.bands,
                                      mean=cfg.mean, std=cfg.std, augment=cfg.augment, seed=cfg.seed,
                                      shuffle=cfg.shuffle, rank=info.rank, world=info.world, log=log)
            self.classes = list(self.stream.classes)
            samples = self.stream.num_samples
            self.format, self.items = "shards", samples
        else:
            from dynamicvis_cli.data.discover import open_dataset

            spec = open_dataset(cfg.data, "region", format=cfg.format, classes=cfg.classes,
                                image_root=cfg.image_root, geo=cfg.geo)
            spec.check_bands(cfg.bands)
            self.dataset = TaskDataset(spec, tile_size=cfg.tile_size, bands=cfg.bands, mean=cfg.mean,
                                       std=cfg.std, augment=cfg.augment, seed=cfg.seed, repeat=cfg.repeat)
            self.classes = list(spec.classes)
            self.format, self.items = spec.format, len(self.dataset)
        per_epoch = cfg.steps_per_epoch or (max(1, self.items // cfg.batch_size) if self.items else None)
        self.steps_per_epoch = per_epoch or 1000

    def batches(self, start: int, stop: int) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        pin = self.device.type == "cuda"
        if self.dataset is not None:
            plan = BatchPlan(seed=cfg.seed, items=len(self.dataset), batch_size=cfg.batch_size, accum=cfg.accum,
                             steps_per_epoch=self.steps_per_epoch, start=start, stop=stop, rank=self.info.rank,
                             world=self.info.world)
            yield from DataLoader(self.dataset, batch_sampler=plan, num_workers=cfg.workers, collate_fn=collate,
                                  pin_memory=pin)
            return
        assert self.stream is not None
        epoch = start // self.steps_per_epoch
        while True:
            self.stream.set_epoch(epoch)
            loader = DataLoader(self.stream, batch_size=self.micro, num_workers=cfg.workers, collate_fn=collate,
                                pin_memory=pin, drop_last=True)
            got = False
            for batch in loader:
                got = True
                yield batch
            if not got:
                raise DvisUsageError(f"{cfg.data}: a pass over the shards gave no batch of {self.micro} "
                                     "sample(s) on this process; lower --batch-size or add data")
            epoch += 1


def _initial_embeddings(cfg: PretrainConfig, classes: list[str]) -> Tensor | None:
    return load_embeddings(cfg.embeddings, classes) if cfg.embeddings else None


def pretrain(cfg: PretrainConfig, *, log: Logger | None = None) -> dict[str, Any]:
    """Pretrain as ``cfg`` says; returns the summary (also OUT/summary.json).

    Raises:
        DvisUsageError, DatasetError: bad config, data or embedding file (before training).
    """
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        return _pretrain(cfg, device, info, log or (lambda s: None))
    finally:
        shutdown(info)


def _resolve(cfg: PretrainConfig) -> PretrainConfig:
    if not cfg.data:
        raise DvisUsageError("no pretraining data: give --data (shards or a detection dataset)")
    if not cfg.out:
        raise DvisUsageError("no output folder: give -o/--out")
    cfg = dataclasses.replace(cfg, task="region")
    mcfg, _ = resolve_model(cfg.model)
    in_chans = len(cfg.bands) if cfg.bands else mcfg.backbone.in_chans
    out = resolve(cfg, model_tile=mcfg.tile_size, model_mean=mcfg.mean, model_std=mcfg.std, in_chans=in_chans)
    assert isinstance(out, PretrainConfig)
    if out.ce_weight < 0:
        raise DvisUsageError(f"ce_weight {out.ce_weight}: not negative")
    if not 0 < out.temperature <= 1:
        raise DvisUsageError(f"temperature {out.temperature}: in (0, 1]")
    return out


def _pretrain(cfg: PretrainConfig, device: torch.device, info: DistInfo, log: Logger) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = _resolve(cfg)
    out = Path(str(cfg.out))
    per_rank, rest = divmod(cfg.batch_size, info.world * cfg.accum)
    if per_rank < 1 or rest:
        raise DvisUsageError(f"batch_size {cfg.batch_size} does not split into {info.world} process(es) x "
                             f"{cfg.accum} accumulation step(s); make it a multiple of {info.world * cfg.accum}")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise DvisUsageError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    source = _Source(cfg, info, device, log)
    classes = source.classes
    init = _initial_embeddings(cfg, classes)  # checked before any weight is built
    resume_from = _prepare_out(out, cfg, info)
    total = cfg.steps if cfg.steps is not None else int(cfg.epochs or 1) * source.steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(0.05 * total))
    assert cfg.tile_size is not None and cfg.bands is not None and cfg.lr is not None

    torch.manual_seed(cfg.seed)
    net, mconfig, weights = build_for_training(cfg.model, "region", classes, in_chans=len(cfg.bands),
                                               tile_size=cfg.tile_size, scan_backend=cfg.scan_backend)
    trunk: Any = net.trunk
    trunk.backbone.gumbel_schedule = cfg.gumbel_schedule
    freeze_stages(trunk.backbone, cfg.freeze_stages or 0)
    meta = MetaEmbeddingLoss(trunk.fpn.out_channels, classes, init=init, ce_weight=cfg.ce_weight,
                             temperature=cfg.temperature)
    module = PretrainModule(net, meta).to(device)
    feed = ProgressFeed(trunk.backbone)
    if cfg.token_drop > 0:
        TokenDrop(trunk.backbone, cfg.token_drop)
    module.train()
    optimizer = build_optimizer(module, cfg.lr, cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    step0 = 0
    if resume_from is not None:
        step0 = ckpt.restore_training(resume_from, model=net, aux=meta, optimizer=optimizer,
                                      scaler=scaler)
        log(f"resuming from {resume_from} at step {step0}")
    runlog = RunLog(out, enabled=info.main, resume_step=step0 if resume_from is not None else None)
    if info.main:
        with atomic_output(out / "train.yaml", overwrite=True) as tmp:
            tmp.write_text(cfg.to_yaml(), encoding="utf-8")
    wrapped: nn.Module = module
    if info.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if weights.get("trunk") == "random":
        log(f"{cfg.model}: pretraining from random initialisation")
    log(f"pretraining on {source.items or 'streamed'} samples ({source.format}), {len(classes)} categories; "
        f"{total} steps x batch {cfg.batch_size}, {info.world} process(es)")

    provenance = {"pretrained_from": str(cfg.model), "pretrain_data": str(cfg.data), "trainer": f"dvis {__version__}",
                  "weights": "pretrained (dvis pretrain, meta-embedding MIL-NCE)",
                  "pretrain_embeddings": cfg.embeddings or "random"}

    def model_config(step: int, loss: float | None) -> Any:
        return export_config(mconfig, classes=classes, bands=cfg.bands or [], mean=cfg.mean or [],
                             std=cfg.std or [], tile_size=int(cfg.tile_size or 0),
                             gumbel_schedule=cfg.gumbel_schedule,
                             provenance={**provenance, "pretrain_steps": step, "pretrain_final_loss": loss,
                                         "pretrain_date": datetime.date.today().isoformat()})

    def save(step: int, loss: float | None) -> None:
        if info.main:
            ckpt.save_training(out, step, model_state=net.state_dict(), config=model_config(step, loss),
                               optimizer=optimizer, aux_state=meta.state_dict(),
                               trainer={"scaler": scaler.state_dict() if scaler is not None else None,
                                        "total_steps": total, "config": cfg.to_dict()},
                               keep=cfg.keep_checkpoints)
        barrier(info)

    batches = source.batches(step0, total)
    history: list[float] = []
    window: list[dict[str, float]] = []
    last_row: dict[str, Any] = {}
    stepper = Stepper(module=module, wrapped=wrapped, optimizer=optimizer, scaler=scaler, feed=feed, info=info,
                      device=device, seed=cfg.seed, lr=cfg.lr, total=total, warmup=warmup,
                      min_lr_ratio=cfg.min_lr_ratio, accum=cfg.accum, precision=cfg.precision,
                      grad_clip=cfg.grad_clip)
    for step in range(step0, total):
        window.append(stepper.step(step, batches))
        done = step + 1
        if done % cfg.log_every == 0 or done == total or done == step0 + 1:
            last_row = stepper.row(window, done, source.steps_per_epoch, start)
            window = []
            history.append(last_row["loss"])
            runlog.write(last_row)
            log(f"step {done}/{total} loss {last_row['loss']:.4f} (mil-nce {last_row.get('mil_nce', 0):.4f}, "
                f"ce {last_row.get('ce', 0):.4f}) lr {last_row['lr']:.2e}")
        if (cfg.save_every and done % cfg.save_every == 0) or done == total:
            save(done, last_row.get("loss"))

    final = history[-1] if history else None
    summary = {"command": "pretrain", "out": str(out), "model": str(cfg.model), "weights_from": weights,
               "data": str(cfg.data), "format": source.format, "samples": source.items, "categories": classes,
               "embeddings": cfg.embeddings or "random", "steps": total,
               "resumed_from_step": step0 if resume_from is not None else None, "batch_size": cfg.batch_size,
               "processes": info.world, "first_loss": history[0] if history else None, "final_loss": final,
               "logit_scale": float(meta.logit_scale.detach().exp()), "wall_s": round(time.perf_counter() - start, 2),
               "outputs": {"backbone": str(out), "region": str(out / "region"),
                           "embeddings": str(out / EMBEDDINGS_NAME)}}
    if info.main:
        export(out, net, meta, model_config(total, final))
        with atomic_output(out / "summary.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    barrier(info)
    return summary


EMBEDDINGS_NAME = "meta_embeddings.safetensors"


def export(out: Path, net: nn.Module, meta: MetaEmbeddingLoss, region_config: Any) -> None:
    """Write the backbone checkpoint (OUT), the region classifier (OUT/region) and the embeddings."""
    from safetensors.torch import save_file

    state = {k: v.detach() for k, v in net.state_dict().items()}
    (out / "region").mkdir(parents=True, exist_ok=True)
    ckpt.save_final(out / "region", state, region_config)
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    backbone = dataclasses.replace(region_config, task="backbone", classes=[], head={})
    ckpt.save_final(out, trunk, backbone)
    with atomic_output(out / EMBEDDINGS_NAME, overwrite=True) as tmp:
        save_file({"embeddings": meta.embeddings.detach().float().contiguous()}, str(tmp),
                  metadata={"names": ",".join(meta.categories), "format": "pt"})


__all__ = ["EMBEDDINGS_NAME", "PretrainConfig", "export", "is_shards", "pretrain"]
