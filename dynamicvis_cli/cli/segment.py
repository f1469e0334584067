"""``dvis segment``: a land-cover (class) raster for each scene, optionally polygons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


@app.command("segment")
def segment(
    inputs: Annotated[list[str], typer.Argument(help="Scenes (paths or globs).")],
    output: o.OutputOpt = None,
    out_dir: o.OutDirOpt = None,
    name_template: Annotated[str, typer.Option("--name-template", help="Output name under --out-dir.")] = "{stem}.seg.tif",
    vector: Annotated[Path | None, typer.Option("--vector", help="Also write polygons (.gpkg, .geojson, .parquet, .fgb); one input only.")] = None,
    simplify: Annotated[float | None, typer.Option("--simplify", help="Simplify polygons (map units).")] = None,
    min_area: Annotated[float | None, typer.Option("--min-area", help="Drop polygons under this area (m², equal-area).")] = None,
    quicklook: o.QuicklookOpt = None,
    model: o.ModelOpt = "base",
    classes: o.ClassesOpt = None,
    random_weights: o.RandomOpt = False,
    bands: o.BandsOpt = None,
    stretch: o.StretchOpt = False,
    tile_size: o.TileOpt = None,
    overlap: o.OverlapOpt = None,
    stitch: Annotated[str, typer.Option("--stitch", help="blend (tapered overlap weights) or crop (centres).")] = "blend",
    batch_size: o.BatchOpt = 4,
    workers: o.WorkersOpt = 0,
    max_memory: o.MaxMemoryOpt = None,
    device: o.DeviceOpt = "auto",
    precision: o.PrecisionOpt = o.Precision.fp32,
    overwrite: o.OverwriteOpt = False,
    skip_existing: o.SkipExistingOpt = False,
    shard: o.ShardOpt = None,
    quiet: o.QuietOpt = False,
) -> None:
    """Segment scenes into class rasters (Cloud-Optimized GeoTIFF on the input's grid).

    Class ids are stored as uint8 with 255 = no data; class names go in the tags.
    """
    from dynamicvis_cli.cli.common import run_scene_jobs
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.infer.batch import plan_jobs
    from dynamicvis_cli.infer.context import RunOptions
    from dynamicvis_cli.infer.dense import segment_scene

    jobs = plan_jobs(inputs, output=output, out_dir=out_dir, template=name_template, shard_spec=shard)
    if (vector is not None or quicklook is not None) and len(jobs) > 1:
        raise DvisUsageError("--vector and --quicklook name one file; use them with a single input")

    def run(loaded, chosen, job, bar):  # type: ignore[no-untyped-def]
        opts = RunOptions(device=device, precision=precision.value, batch_size=batch_size, workers=workers,
                          tile_size=tile_size, overlap=overlap, overwrite=overwrite, progress=bar,
                          max_memory=o.parse_memory(max_memory))
        return segment_scene(loaded, job.src, job.out, bands=chosen, opts=opts, vector=vector,
                             simplify=simplify, min_area=min_area, mode=stitch, stretch=stretch, quicklook=quicklook)

    run_scene_jobs("segment", "segment", jobs, skip_existing=skip_existing, quiet=quiet, run=run,
                   max_memory=max_memory,
                   load={"model": model, "bands": o.parse_bands(bands), "classes": o.parse_classes(classes),
                         "random_weights": random_weights, "tile_size": tile_size, "device": device})
