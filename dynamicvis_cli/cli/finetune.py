"""``dvis finetune``: train a task head (and the backbone) on a labelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()

_TASKS = "classify, segment, change, detect, instance or region"


@app.command("finetune")
def finetune(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c",
        help="YAML config; flags override its values.")] = None,
    task: Annotated[str | None, typer.Option("--task", help=f"Task: {_TASKS}.")] = None,
    data: Annotated[str | None, typer.Option(
        "--data",
        help="Training data: a folder, a COCO .json or a geo .yaml.")] = None,
    val_data: Annotated[str | None, typer.Option("--val-data", help="Validation data (same format).")] = None,
    format: Annotated[str | None, typer.Option(
        "--format",
        help="Dataset format: auto, imagefolder, masks, change-pairs, coco, yolo, nwpu, voc, dota, "
             "fmow, geo.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o",
        help="Run folder; ends as a checkpoint every inference command accepts.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help="Start from: base, large, small, tiny (random), a released model or a checkpoint.")] = None,
    classes: o.ClassesOpt = None,
    palette: Annotated[str | None, typer.Option(
        "--palette",
        help="Colour masks: JSON/YAML file mapping class names to #RRGGBB.")] = None,
    bands: o.BandsOpt = None,
    tile_size: Annotated[int | None, typer.Option(
        "--tile-size", min=32,
        help="Training crop side (default: the model's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs (default 50).")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", min=1,
        help="Optimiser steps (wins over --epochs).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1,
        help="Global batch per optimiser step (all processes).")] = None,
    accum: Annotated[int | None, typer.Option("--accum", min=1, help="Gradient-accumulation steps.")] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr",
        help="Peak learning rate (default: the task's).")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="AdamW weight decay.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(
        "--warmup-steps", min=0,
        help="Linear warm-up steps (default 5%).")] = None,
    precision: Annotated[o.Precision | None, typer.Option(
        "--precision",
        help="fp32, bf16 or fp16 (AMP; fp16 on CUDA).")] = None,
    freeze_stages: Annotated[int | None, typer.Option(
        "--freeze-stages", min=0, max=4,
        help="Frozen backbone stages.")] = None,
    gumbel_schedule: Annotated[str | None, typer.Option(
        "--gumbel-schedule",
        help="Router noise: decay, fixed or off.")] = None,
    token_drop: Annotated[float | None, typer.Option(
        "--token-drop", min=0.0, max=0.95,
        help="EXPERIMENTAL: drop this fraction of tokens before the heads in training.")] = None,
    no_augment: Annotated[bool, typer.Option(
        "--no-augment",
        help="No flips, rotations, scale or colour jitter.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    save_every: Annotated[int | None, typer.Option(
        "--save-every", min=1,
        help="Checkpoint every N steps (and at the end).")] = None,
    eval_every: Annotated[int | None, typer.Option(
        "--eval-every", min=1,
        help="Validate every N steps (and at the end).")] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", min=1, help="Log every N steps.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Data-loading processes.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume",
        help="Continue from the newest checkpoint in --out.")] = False,
    resume_from: Annotated[Path | None, typer.Option(
        "--resume-from",
        help="Continue from this checkpoint folder.")] = None,
    overwrite: o.OverwriteOpt = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set",
        help="Any config key: --set augment.scale=[0.5,2] (repeatable).")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config",
        help="Print the resolved config as YAML and exit.")] = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Fine-tune a model on a labelled dataset; the run folder becomes a checkpoint.

    Multi-GPU / multi-node: run under torchrun, e.g.
    torchrun --nproc_per_node 4 -m dynamicvis_cli finetune -c run.yaml
    """
    import os

    from dynamicvis_cli.cli.output import emit, err
    from dynamicvis_cli.train.config import TrainConfig, command_line_config, load_yaml

    cfg = load_yaml(config) if config is not None else TrainConfig()
    flags: dict[str, Any] = {
        "task": task, "data": data, "val_data": val_data, "format": format, "out": str(out) if out else None,
        "model": model, "classes": o.parse_classes(classes), "palette": palette,
        "bands": o.parse_bands(bands),
        "tile_size": tile_size, "epochs": epochs, "steps": steps, "batch_size": batch_size, "accum": accum,
        "lr": lr, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
        "precision": precision.value if precision is not None else None, "freeze_stages": freeze_stages,
        "gumbel_schedule": gumbel_schedule, "token_drop": token_drop, "seed": seed, "save_every": save_every,
        "eval_every": eval_every, "log_every": log_every, "workers": workers, "device": device,
    }
    cfg = command_line_config(cfg, flags, no_augment=no_augment, overwrite=overwrite, sets=set_,
                              resume=str(resume_from) if resume_from is not None else resume)
    main_rank = os.environ.get("RANK", "0") == "0"

    if print_config:
        from dynamicvis_cli.checkpoints.registry import resolve as resolve_model
        from dynamicvis_cli.train.config import resolve

        mcfg, _ = resolve_model(cfg.model)
        n = len(cfg.bands) if cfg.bands else mcfg.backbone.in_chans
        typer.echo(resolve(cfg, model_tile=mcfg.tile_size, model_mean=mcfg.mean, model_std=mcfg.std,
                           in_chans=n, require_io=False, model_bands=mcfg.band_indexes).to_yaml(), nl=False)
        return

    from dynamicvis_cli.train.loop import fit

    def log(line: str) -> None:
        if not quiet and main_rank:
            err.print(line, markup=False, highlight=False)

    summary = fit(cfg, log=log)
    if main_rank:
        emit(summary)
