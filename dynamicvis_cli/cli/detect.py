"""``dvis detect``: objects in scenes as polygons at the right place on Earth."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


class NmsMatch(str, Enum):
    iou = "iou"
    ios = "ios"


@app.command("detect")
def detect(
    inputs: Annotated[list[str], typer.Argument(help="Scenes (paths or globs).")],
    output: o.OutputOpt = None,
    out_dir: o.OutDirOpt = None,
    name_template: Annotated[str, typer.Option("--name-template", help="Output name under --out-dir.")] = "{stem}.geojson",
    quicklook: o.QuicklookOpt = None,
    model: o.DefaultModelOpt = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class names: keep only these (a model with its own head), or the "
                          "classes of a new random head (a backbone or random model).")] = None,
    random_weights: o.RandomOpt = False,
    masks: Annotated[bool, typer.Option(
        "--masks", help="Instance masks as polygons: build a Mask R-CNN head on a backbone or random model "
                        "(an instance model always gives masks).")] = False,
    threshold: o.ThresholdOpt = 0.3,
    iou_threshold: Annotated[float, typer.Option("--iou-threshold", min=0.0, max=1.0, help="NMS IoU threshold.")] = 0.5,
    nms_match: Annotated[NmsMatch, typer.Option(
        "--nms-match", help="NMS overlap measure: iou, or ios (intersection over the smaller box: also drops "
                            "boxes nested in a better one); --iou-threshold applies to it.")] = NmsMatch.iou,
    max_detections: Annotated[int | None, typer.Option("--max-detections", min=0, help="Keep the best N per scene.")] = None,
    bands: o.BandsOpt = None,
    stretch: o.StretchOpt = False,
    tile_size: o.TileOpt = None,
    overlap: o.OverlapOpt = None,
    tta: o.TtaOpt = o.Tta.none,
    batch_size: o.BatchOpt = 4,
    workers: o.WorkersOpt = 0,
    max_memory: o.MaxMemoryOpt = None,
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
    """Detect objects; write boxes (or instance masks) as polygons (.geojson in lon/lat, .gpkg/.parquet/.fgb
    native CRS; -o - streams GeoJSONSeq to stdout and the summary to stderr)."""
    o.check_resume(manifest, resume)
    from dynamicvis_cli.cli.common import run_scene_jobs, start_ranks
    from dynamicvis_cli.infer.batch import plan_jobs
    from dynamicvis_cli.infer.context import RunOptions
    from dynamicvis_cli.infer.detect import class_filter, detect_scene, detect_task

    jobs = plan_jobs(inputs, output=output, out_dir=out_dir, template=name_template, shard_spec=shard)
    if quicklook is not None and len(jobs) > 1:
        from dynamicvis_cli.errors import DvisUsageError

        raise DvisUsageError("--quicklook names one file; use it with a single input")

    device = start_ranks(device, devices)  # --devices: may re-run this command once per device

    def run(loaded, chosen, job, bar):  # type: ignore[no-untyped-def]
        opts = RunOptions(device=device, precision=precision.value, batch_size=batch_size, workers=workers,
                          tile_size=tile_size, overlap=overlap, overwrite=overwrite or job.overwrite,
                          progress=bar, max_memory=o.parse_memory(max_memory), tta=tta.value, world=job.world)
        return detect_scene(loaded, job.src, job.out, bands=chosen, opts=opts, threshold=threshold,
                            iou_threshold=iou_threshold, nms_match=nms_match.value,
                            max_detections=max_detections, pixel_coords=pixel_coords, stretch=stretch,
                            quicklook=quicklook, keep_classes=keep)

    from dynamicvis_cli.checkpoints.registry import default_model

    model = model or default_model("detect")
    task = detect_task(model, masks=masks)  # "instance" for an instance model or --masks
    # A model with its own head: --classes filters its output; else it names a new head's classes.
    keep, head_classes = class_filter(model, task, o.parse_classes(classes))
    # -o -: the features stream to stdout as GeoJSONSeq, so the summary goes to stderr.
    run_scene_jobs("detect", task, jobs, skip_existing=skip_existing, quiet=quiet, run=run,
                   max_memory=max_memory, summary_to_stderr=str(output) == "-",
                   manifest=manifest, resume=resume, force=force,
                   settings={"tile_size": tile_size, "overlap": overlap, "tta": tta.value,
                             "precision": precision.value, "stretch": stretch, "threshold": threshold,
                             "iou_threshold": iou_threshold,
                             "nms_match": nms_match.value, "max_detections": max_detections,
                             "masks": masks, "pixel_coords": pixel_coords, "keep_classes": keep},
                   load={"model": model, "bands": o.parse_bands(bands), "classes": head_classes,
                         "random_weights": random_weights, "tile_size": tile_size, "device": device})
