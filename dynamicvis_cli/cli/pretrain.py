"""``dvis pretrain``: meta-embedding multi-instance pretraining on region-annotated imagery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


@app.command("pretrain")
def pretrain(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config; flags override it.")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Shards from dvis data shard (folder, .tar, glob or {000..127} pattern), or a "
                       "detection dataset (COCO .json, NWPU, YOLO, VOC, DOTA, fMoW, geo .yaml).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder; ends as a backbone checkpoint (+ region/ and the embeddings).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Start from: base, large, small, tiny (random) or a checkpoint.")] = None,
    embeddings: Annotated[str | None, typer.Option(
        "--embeddings", help="Initial category embeddings: .safetensors, .npz or .npy (+ .txt names); "
                             "default random.")] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Categories, comma-separated (default: the data's).")] = None,
    bands: o.BandsOpt = None,
    tile_size: Annotated[int | None, typer.Option("--tile-size", min=32, help="Training crop side.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimiser steps (wins over --epochs).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Passes over the data.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Global batch (images).")] = None,
    accum: Annotated[int | None, typer.Option("--accum", min=1, help="Gradient-accumulation steps.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default 4e-4).")] = None,
    precision: Annotated[o.Precision | None, typer.Option(
        "--precision", help="fp32, bf16 or fp16 (AMP; fp16 on CUDA).")] = None,
    gumbel_schedule: Annotated[str | None, typer.Option(
        "--gumbel-schedule", help="Router noise: decay (default), fixed or off.")] = None,
    token_drop: Annotated[float | None, typer.Option(
        "--token-drop", min=0.0, max=0.95, help="EXPERIMENTAL: drop this fraction of tokens in training.")] = None,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="No flips, rotations, scale or colour jitter.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", min=1, help="Checkpoint every N steps.")] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", min=1, help="Log every N steps.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Data-loading processes.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = False,
    overwrite: o.OverwriteOpt = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any config key: --set ce_weight=0.5 (repeatable).")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")] = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Pretrain a backbone on boxes with categories: region features from all FPN levels against
    learnable category embeddings (MIL-NCE + cross-entropy), streamed from WebDataset shards.

    Multi-GPU / multi-node: run under torchrun, e.g.
    torchrun --nproc_per_node 8 -m dynamicvis_cli pretrain --data 'shards/{000000..000127}.tar' -o runs/pre
    """
    import os

    from dynamicvis_cli.cli.output import emit, err
    from dynamicvis_cli.train.config import command_line_config, load_yaml
    from dynamicvis_cli.train.pretrain import PretrainConfig

    cfg = load_yaml(config, base=PretrainConfig()) if config is not None else PretrainConfig()
    flags: dict[str, Any] = {
        "data": data, "out": str(out) if out else None, "model": model, "embeddings": embeddings,
        "classes": o.parse_classes(classes), "bands": o.parse_bands(bands), "tile_size": tile_size,
        "steps": steps, "epochs": epochs, "batch_size": batch_size, "accum": accum, "lr": lr,
        "precision": precision.value if precision is not None else None, "gumbel_schedule": gumbel_schedule,
        "token_drop": token_drop, "seed": seed, "save_every": save_every, "log_every": log_every,
        "workers": workers, "device": device,
    }
    cfg = command_line_config(cfg, flags, no_augment=no_augment, resume=resume, overwrite=overwrite, sets=set_)
    main_rank = os.environ.get("RANK", "0") == "0"
    if print_config:
        typer.echo(cfg.to_yaml(), nl=False)
        return

    from dynamicvis_cli.train.pretrain import pretrain as run

    def log(line: str) -> None:
        if not quiet and main_rank:
            err.print(line, markup=False, highlight=False)

    summary = run(cfg, log=log)  # type: ignore[arg-type]
    if main_rank:
        emit(summary)
