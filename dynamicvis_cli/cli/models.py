"""``dvis models list | show | import``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynamicvis_cli.cli.output import emit, err

app = typer.Typer(help="List, describe and import models.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


@app.command("list")
def list_cmd(
    pattern: Annotated[str, typer.Argument(help="fnmatch pattern, e.g. 'base*'.")] = "*",
    json_out: JsonOpt = False,
) -> None:
    """List registered architectures and released models."""
    from dynamicvis_cli.checkpoints.defaults import COMMAND_DEFAULTS
    from dynamicvis_cli.checkpoints.registry import architectures, list_models, released_models

    archs, released = architectures(), released_models()
    rows = []
    for name in list_models(pattern):
        if name in archs:
            rows.append({"name": name, "kind": "architecture", "weights": "none (random init)",
                         "description": archs[name].description})
        else:
            default_of = [c for c, m in COMMAND_DEFAULTS.items() if m == name]
            rows.append({"name": name, "kind": "released", "weights": str(released[name]),
                         "default_of": default_of,
                         "description": "default of " + ", ".join(f"dvis {c}" for c in default_of)
                         if default_of else ""})
    if json_out:
        emit({"models": rows})
        return
    from rich.table import Table

    table = Table("name", "kind", "weights", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["weights"], r["description"])
    from rich.console import Console

    Console().print(table)


def describe(model: str) -> dict[str, Any]:
    """What ``models show`` prints, as a dict."""
    import torch

    from dynamicvis_cli.checkpoints.load import build_model, count_parameters
    from dynamicvis_cli.checkpoints.registry import resolve

    config, location = resolve(model)
    with torch.device("meta"):
        net = build_model(config)
    return {
        "model": model,
        "location": str(location) if location else None,
        "arch": config.arch,
        "task": config.task,
        "parameters": {
            "backbone": count_parameters(net.backbone),
            "fpn": count_parameters(net.fpn) if net.fpn is not None else 0,
            "total": count_parameters(net),
        },
        "built_for_px": config.backbone.img_size,
        "bands": config.bands,
        "band_indexes": config.default_bands(),  # the 1-based bands read without --bands
        "in_chans": config.backbone.in_chans,
        "classes": config.classes,
        "normalisation": {"mean": config.mean, "std": config.std},
        "tile_size": config.tile_size,
        "backbone": config.backbone.to_dict(),
        "fpn_channels": config.fpn_channels,
        "source": config.provenance,
    }


@app.command("show")
def show_cmd(
    model: Annotated[str, typer.Argument(help="A model name or a checkpoint path.")],
    json_out: JsonOpt = False,
) -> None:
    """Describe a model: architecture, parameter count, bands, classes, source."""
    info = describe(model)
    if json_out:
        emit(info)
        return
    p = info["parameters"]
    lines = [
        f"model        {info['model']}" + (f"  ({info['location']})" if info["location"] else ""),
        f"arch         {info['arch']}  task {info['task']}",
        f"parameters   backbone {p['backbone']:,}  fpn {p['fpn']:,}  total {p['total']:,}",
        f"dims/depths  {info['backbone']['dims']} / {info['backbone']['depths']}",
        f"built for    {info['built_for_px']} px  (runs at any size)",
        f"bands        {', '.join(info['bands'])} ({info['in_chans']} input channels; without --bands "
        f"reads bands {','.join(map(str, info['band_indexes']))})",
        f"classes      {', '.join(info['classes']) if info['classes'] else '-'}",
        f"source       {info['source']}",
    ]
    typer.echo("\n".join(lines))


@app.command("import")
def import_cmd(
    src: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                        help="The authors' checkpoint (.pth or .safetensors).")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Output folder, or a .safetensors file.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store weights as float16.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log lines on stderr.")] = False,
) -> None:
    """Convert one of the authors' DynamicVis checkpoints into a dvis checkpoint."""
    from dynamicvis_cli.checkpoints.import_authors import import_checkpoint

    summary = import_checkpoint(src, out, overwrite=overwrite, fp16=fp16)
    if not quiet:
        err.print(f"converted {src} → {out} ({summary['arch']}, "
                  f"{summary['backbone_parameters']:,} backbone parameters)")
    emit(summary)
