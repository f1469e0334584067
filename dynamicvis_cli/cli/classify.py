"""``dvis classify``: a label per image, or per grid cell of a scene (--grid)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


@app.command("classify")
def classify(
    inputs: Annotated[list[str], typer.Argument(help="Images or scenes (paths or globs).")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Results: .csv or .json for images; a vector file with --grid.")] = None,
    out_dir: o.OutDirOpt = None,
    name_template: Annotated[str, typer.Option("--name-template", help="Output name under --out-dir.")] = "{stem}.json",
    grid: Annotated[int | None, typer.Option("--grid", help="Classify a scene in CELL x CELL px cells; one polygon per cell.")] = None,
    regions: Annotated[Path | None, typer.Option("--regions", help="Classify these regions of the scene (a vector file; each feature's bounding box) with a region classifier; writes them back with class and score.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes listed per image in JSON.")] = 3,
    model: o.DefaultModelOpt = None,
    classes: o.ClassesOpt = None,
    random_weights: o.RandomOpt = False,
    bands: o.BandsOpt = None,
    stretch: o.StretchOpt = False,
    batch_size: o.BatchOpt = 8,
    workers: o.WorkersOpt = 0,
    device: o.DeviceOpt = "auto",
    devices: o.DevicesOpt = None,
    precision: o.PrecisionOpt = o.Precision.fp32,
    pixel_coords: o.PixelOpt = False,
    overwrite: o.OverwriteOpt = False,
    skip_existing: o.SkipExistingOpt = False,
    shard: o.ShardOpt = None,
    manifest: o.ManifestOpt = None,
    resume: o.ResumeOpt = False,
    force: o.ForceOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Classify images (one label each); with --grid, the cells of scenes; with --regions, given
    regions of scenes (a region classifier from dvis finetune --task region or dvis pretrain).

    Under torchrun or --devices the images (or, with --grid, the scenes) are shared among the
    ranks; rank 0 writes -o and prints the summary. --manifest/--resume work with --grid.
    """
    from pathlib import Path

    from dynamicvis_cli.cli.common import load_for_inputs, progress_bar, run_scene_jobs, start_ranks
    from dynamicvis_cli.cli.common import weights_summary
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.geo.atomic import check_writable
    from dynamicvis_cli.infer.batch import expand_inputs, parse_shard, plan_jobs, shard as take_shard
    from dynamicvis_cli.infer.classify import classify_grid, classify_images, write_records
    from dynamicvis_cli.infer.context import RunOptions

    device = start_ranks(device, devices)  # --devices: may re-run this command once per device
    if grid is not None and regions is not None:
        raise DvisUsageError("--grid and --regions: choose one")
    from dynamicvis_cli.checkpoints.registry import default_model

    # a chip classifier is no region classifier: --regions has no released default
    model = model or default_model("classify --regions" if regions is not None else "classify")
    if regions is not None:
        _classify_regions(inputs, regions, output=output, out_dir=out_dir, name_template=name_template,
                          model=model, bands=bands, classes=classes, random_weights=random_weights, top_k=top_k,
                          shard=shard, manifest=manifest, resume=resume, force=force, quiet=quiet,
                          skip_existing=skip_existing, pixel_coords=pixel_coords, stretch=stretch,
                          opts_kw={"device": device, "precision": precision.value, "batch_size": batch_size,
                                   "workers": workers, "overwrite": overwrite})
        return
    load = {"model": model, "bands": o.parse_bands(bands), "classes": o.parse_classes(classes),
            "random_weights": random_weights, "tile_size": grid, "device": device}
    opts_kw = {"device": device, "precision": precision.value, "batch_size": batch_size, "workers": workers,
               "overwrite": overwrite}
    if grid is not None:
        template = name_template if name_template != "{stem}.json" else "{stem}.grid.gpkg"
        jobs = plan_jobs(inputs, output=Path(output) if output else None, out_dir=out_dir,
                         template=template, shard_spec=shard)

        def run(loaded, chosen, job, bar):  # type: ignore[no-untyped-def]
            opts = RunOptions(progress=bar, **opts_kw)
            return classify_grid(loaded, job.src, job.out, cell=grid, bands=chosen, opts=opts,
                                 pixel_coords=pixel_coords, stretch=stretch)

        run_scene_jobs("classify", "classify", jobs, skip_existing=skip_existing, quiet=quiet, run=run,
                       load=load, summary_to_stderr=str(output) == "-", manifest=manifest, resume=resume,
                       force=force,
                       settings={"cell": grid, "precision": precision.value, "stretch": stretch,
                                 "pixel_coords": pixel_coords},
                       split_tiles=False)
        return
    if manifest is not None or resume:
        raise DvisUsageError("--manifest and --resume work with --grid (scenes); chips go to one -o file")
    from dynamicvis_cli.infer.distributed import init_world, rank_share, shutdown

    paths = take_shard(expand_inputs(inputs), parse_shard(shard))
    if (output is None) == (out_dir is None):
        raise DvisUsageError("give -o/--output (.csv or .json for all images) or --out-dir (one JSON each)")
    if output is not None:
        check_writable(Path(output), overwrite=overwrite)
    world = init_world(device)  # under torchrun: each rank classifies its share of the images
    try:
        loaded, _ = load_for_inputs(task="classify", first_input=paths[0], quiet=quiet or not world.main,
                                    **load)
        if loaded.random:
            world.broadcast_module(loaded.module)
        with progress_bar(quiet or not world.main, "classify") as bar:
            records = classify_images(loaded, rank_share(paths, world), bands=load["bands"],
                                      opts=RunOptions(progress=bar, **opts_kw), top_k=top_k, stretch=stretch)
        shares = world.gather(records)
    finally:
        shutdown()
    if shares is None:  # another rank: rank 0 writes and reports
        return
    # Back in input order: rank r classified images r, r + N, ...
    records = [shares[i % len(shares)][i // len(shares)] for i in range(len(paths))]
    written = []
    if output is not None:
        write_records(records, Path(output), overwrite=overwrite)
        written.append(output)
    else:
        assert out_dir is not None
        for path, rec in zip(paths, records):
            target = out_dir / name_template.format(stem=path.stem, name=path.name, parent=path.parent.name)
            if skip_existing and target.exists():
                continue
            write_records([rec], target, overwrite=overwrite)
            written.append(str(target))
    counts: dict[str, int] = {}
    for r in records:
        if r["class"] is not None:
            counts[r["class"]] = counts.get(r["class"], 0) + 1
    emit({"command": "classify", **weights_summary(loaded), "images": len(records), "per_class": counts,
          "outputs": [str(w) for w in written], "results": records if len(records) <= 50 else "see outputs"})


def _classify_regions(inputs: list[str], regions: Path, *, output: str | None, out_dir: Path | None,
                      name_template: str, model: str, bands: str | None, classes: str | None,
                      random_weights: bool, top_k: int,
                      shard: str | None, manifest: Path | None, resume: bool, force: bool, quiet: bool,
                      skip_existing: bool, pixel_coords: bool, stretch: bool, opts_kw: dict[str, Any]) -> None:
    """``--regions``: each scene's regions classified, written as a vector file per scene."""
    from dynamicvis_cli.cli.common import run_scene_jobs
    from dynamicvis_cli.errors import InputNotFoundError
    from dynamicvis_cli.infer.batch import plan_jobs
    from dynamicvis_cli.infer.context import RunOptions
    from dynamicvis_cli.infer.regions import classify_regions

    if not regions.exists():
        raise InputNotFoundError(regions, "regions file")
    template = name_template if name_template != "{stem}.json" else "{stem}.regions.gpkg"
    jobs = plan_jobs(inputs, output=Path(output) if output else None, out_dir=out_dir, template=template,
                     shard_spec=shard)
    load = {"model": model, "bands": o.parse_bands(bands), "classes": o.parse_classes(classes),
            "random_weights": random_weights,
            "tile_size": None, "device": opts_kw["device"]}

    def run(loaded, chosen, job, bar):  # type: ignore[no-untyped-def]
        return classify_regions(loaded, job.src, regions, job.out, bands=chosen,
                                opts=RunOptions(progress=bar, **opts_kw), top_k=top_k,
                                pixel_coords=pixel_coords, stretch=stretch)

    run_scene_jobs("classify", "region", jobs, skip_existing=skip_existing, quiet=quiet, run=run, load=load,
                   summary_to_stderr=str(output) == "-", manifest=manifest, resume=resume, force=force,
                   settings={"regions": str(regions), "precision": opts_kw["precision"], "stretch": stretch},
                   split_tiles=False)
