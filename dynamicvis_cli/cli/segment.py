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
    model: o.DefaultModelOpt = None,
    classes: o.ClassesOpt = None,
    random_weights: o.RandomOpt = False,
    bands: o.BandsOpt = None,
    stretch: o.StretchOpt = False,
    tile_size: o.TileOpt = None,
    overlap: o.OverlapOpt = None,
    blend: o.BlendOpt = None,
    stitch: Annotated[str | None, typer.Option(
        "--stitch", help="Older name of --blend: blend (= cosine) or crop (= centre).")] = None,
    tta: o.TtaOpt = o.Tta.none,
    batch_size: o.BatchOpt = 4,
    workers: o.WorkersOpt = 0,
    max_memory: o.MaxMemoryOpt = None,
    device: o.DeviceOpt = "auto",
    devices: o.DevicesOpt = None,
    precision: o.PrecisionOpt = o.Precision.fp32,
    overwrite: o.OverwriteOpt = False,
    skip_existing: o.SkipExistingOpt = False,
    shard: o.ShardOpt = None,
    manifest: o.ManifestOpt = None,
    resume: o.ResumeOpt = False,
    force: o.ForceOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Segment scenes into class rasters (Cloud-Optimized GeoTIFF on the input's grid).

    Class ids are stored as uint8 with 255 = no data; class names go in the tags.
    """
    mode = o.blend_mode(blend, stitch)  # flags first: usage errors before anything heavy loads
    o.check_resume(manifest, resume)
    from dynamicvis_cli.cli.common import run_scene_jobs, start_ranks
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.checkpoints.registry import default_model
    from dynamicvis_cli.infer.batch import plan_jobs
    from dynamicvis_cli.infer.context import RunOptions
    from dynamicvis_cli.infer.dense import segment_scene
    from dynamicvis_cli.infer.stitch_dense import canonical_mode

    jobs = plan_jobs(inputs, output=output, out_dir=out_dir, template=name_template, shard_spec=shard)
    if (vector is not None or quicklook is not None) and len(jobs) > 1:
        raise DvisUsageError("--vector and --quicklook name one file; use them with a single input")
    device = start_ranks(device, devices)  # --devices: may re-run this command once per device

    def run(loaded, chosen, job, bar):  # type: ignore[no-untyped-def]
        opts = RunOptions(device=device, precision=precision.value, batch_size=batch_size, workers=workers,
                          tile_size=tile_size, overlap=overlap, overwrite=overwrite or job.overwrite,
                          progress=bar, max_memory=o.parse_memory(max_memory), tta=tta.value, world=job.world)
        return segment_scene(loaded, job.src, job.out, bands=chosen, opts=opts, vector=vector,
                             simplify=simplify, min_area=min_area, mode=mode, stretch=stretch,
                             quicklook=quicklook)

    run_scene_jobs("segment", "segment", jobs, skip_existing=skip_existing, quiet=quiet, run=run,
                   max_memory=max_memory, manifest=manifest, resume=resume, force=force,
                   settings={"tile_size": tile_size, "overlap": overlap, "blend": canonical_mode(mode),
                             "tta": tta.value, "precision": precision.value, "stretch": stretch,
                             "simplify": simplify, "min_area": min_area, "vector": vector is not None},
                   load={"model": model or default_model("segment"), "bands": o.parse_bands(bands), "classes": o.parse_classes(classes),
                         "random_weights": random_weights, "tile_size": tile_size, "device": device})
