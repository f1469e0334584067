"""``dvis change``: a change raster between two dates of the same place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


@app.command("change")
def change(
    before: Annotated[Path, typer.Argument(help="First date (its grid is the output's grid).")],
    after: Annotated[Path, typer.Argument(help="Second date.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output change raster (.tif).")],
    align: Annotated[bool, typer.Option("--align", help="Warp the second date onto the first's grid.")] = False,
    resampling: Annotated[str, typer.Option("--resampling", help="For --align: nearest, bilinear, cubic, average, ...")] = "bilinear",
    vector: Annotated[Path | None, typer.Option("--vector", help="Also write change polygons.")] = None,
    simplify: Annotated[float | None, typer.Option("--simplify", help="Simplify polygons (map units).")] = None,
    min_area: Annotated[float | None, typer.Option("--min-area", help="Drop polygons under this area (m², equal-area).")] = None,
    quicklook: o.QuicklookOpt = None,
    model: o.DefaultModelOpt = None,
    classes: o.ClassesOpt = None,
    random_weights: o.RandomOpt = False,
    bands: o.BandsOpt = None,
    stretch: o.StretchOpt = False,
    tile_size: o.TileOpt = None,
    overlap: o.OverlapOpt = None,
    blend: o.BlendOpt = None,
    tta: o.TtaOpt = o.Tta.none,
    batch_size: o.BatchOpt = 4,
    workers: o.WorkersOpt = 0,
    max_memory: o.MaxMemoryOpt = None,
    device: o.DeviceOpt = "auto",
    devices: o.DevicesOpt = None,
    precision: o.PrecisionOpt = o.Precision.fp32,
    overwrite: o.OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Detect change between two rasters that share a grid (or, with --align, warp the second).

    Exit code 3 when the grids differ and --align was not given.
    """
    from dynamicvis_cli.cli.common import (
        load_for_inputs,
        peak_rss_summary,
        progress_bar,
        rank_errors,
        start_ranks,
        weights_summary,
    )
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.errors import InputNotFoundError
    from dynamicvis_cli.infer.context import RunOptions
    from dynamicvis_cli.infer.dense import change_scene
    from dynamicvis_cli.infer.distributed import init_world
    from dynamicvis_cli.infer.memory import set_gdal_cache

    for path in (before, after):
        if not path.exists():
            raise InputNotFoundError(path)
    device = start_ranks(device, devices)  # --devices: may re-run this command once per device
    from dynamicvis_cli.checkpoints.registry import default_model

    model = model or default_model("change")
    set_gdal_cache(o.parse_memory(max_memory))  # before the first raster is read
    world = init_world(device)  # under torchrun: the ranks share the pair's tiles
    with rank_errors(world):
        loaded, chosen = load_for_inputs(model, "change", before, bands=o.parse_bands(bands),
                                         classes=o.parse_classes(classes), random_weights=random_weights,
                                         tile_size=tile_size, device=device, quiet=quiet or not world.main)
        if loaded.random:
            world.broadcast_module(loaded.module)
        with progress_bar(quiet or not world.main, f"change {before.name}") as bar:
            opts = RunOptions(device=device, precision=precision.value, batch_size=batch_size,
                              workers=workers, tile_size=tile_size, overlap=overlap, overwrite=overwrite,
                              progress=bar,
                              max_memory=o.parse_memory(max_memory), tta=tta.value,
                              world=world if world.distributed else None)
            summary = change_scene(loaded, before, after, output, bands=chosen, opts=opts, align=align,
                                   resampling=resampling, vector=vector, simplify=simplify, min_area=min_area,
                                   stretch=stretch, quicklook=quicklook, mode=o.blend_mode(blend, None))
    if not world.main:
        return
    emit({"command": "change", **weights_summary(loaded), "runs": [summary], "failed": [],
          "peak_rss_mb": peak_rss_summary(),
          **({"ranks": {"count": world.size, "split": "tiles"}} if world.distributed else {})})
