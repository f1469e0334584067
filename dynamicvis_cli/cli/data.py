"""``dvis data``: check a training dataset, convert label formats (NWPU txt, YOLO, colour masks),
pack detection sets into WebDataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer(help="Check training datasets, convert label formats, write WebDataset shards.",
                  no_args_is_help=True)

TaskOpt = Annotated[str, typer.Option("--task", help="classify, segment, change, detect or instance.")]
FormatOpt = Annotated[str, typer.Option(
    "--format", help="auto, imagefolder, masks, change-pairs, coco, yolo, nwpu, voc, dota, fmow, geo.")]
PaletteOpt = Annotated[str | None, typer.Option(
    "--palette", help="Colour masks: JSON/YAML file mapping class names to #RRGGBB.")]


@app.command("check")
def check(
    data: Annotated[Path, typer.Argument(help="Dataset: a folder, a COCO .json or a geo .yaml.")],
    task: TaskOpt,
    format: FormatOpt = "auto",
    classes: o.ClassesOpt = None,
    palette: PaletteOpt = None,
) -> None:
    """Read a dataset as dvis finetune would, report problems (exit 2) or counts (JSON)."""
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.data.convert import summarise
    from dynamicvis_cli.data.discover import open_dataset

    spec = open_dataset(data, task, format=format, classes=o.parse_classes(classes), palette=palette)
    emit({"command": "data check", **summarise(spec)})


@app.command("convert")
def convert(
    data: Annotated[Path, typer.Argument(help="Dataset to convert.")],
    to: Annotated[str, typer.Option(
        "--to", help="coco (a .json), yolo (a folder) or index-masks (a folder).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (coco) or folder.")],
    task: Annotated[str | None, typer.Option(
        "--task", help="Task of the input (default: segment for index-masks, else detect).")] = None,
    format: FormatOpt = "auto",
    classes: o.ClassesOpt = None,
    palette: PaletteOpt = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Convert labels: NWPU VHR-10 txt / YOLO / COCO → COCO or YOLO; colour masks → index masks."""
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.data.convert import TARGETS, to_coco, to_index_masks, to_yolo
    from dynamicvis_cli.data.discover import open_dataset
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.geo.atomic import check_writable

    if to not in TARGETS:
        raise DvisUsageError(f"--to {to}: choose one of {', '.join(TARGETS)}")
    check_writable(output, overwrite=overwrite)
    kind = task or ("segment" if to == "index-masks" else "detect")
    spec = open_dataset(data, kind, format=format, classes=o.parse_classes(classes), palette=palette)
    if to == "coco":
        result = to_coco(spec, output, overwrite=overwrite)
    elif to == "yolo":
        result = to_yolo(spec, output, overwrite=overwrite)
    else:
        result = to_index_masks(spec, output, overwrite=overwrite)
    emit({"command": "data convert", "from": spec.format, "to": to, **result})


@app.command("shard")
def shard(
    data: Annotated[Path, typer.Argument(help="Detection dataset: a folder, a COCO .json or a geo .yaml.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder for the shards.")],
    format: FormatOpt = "auto",
    classes: o.ClassesOpt = None,
    samples_per_shard: Annotated[int, typer.Option(
        "--samples-per-shard", min=1, help="Samples per tar shard.")] = 1000,
    image_root: Annotated[Path | None, typer.Option(
        "--image-root", help="COCO: folder of the images (default: beside the .json).")] = None,
    overwrite: o.OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Pack a detection set into WebDataset tar shards (+ dataset.json) for dvis pretrain."""
    from dynamicvis_cli.cli.output import emit, err
    from dynamicvis_cli.data.discover import open_dataset
    from dynamicvis_cli.geo.atomic import check_writable

    if not (output.is_dir() and not any(output.iterdir())):  # an empty folder may be filled
        check_writable(output, overwrite=overwrite)
    spec = open_dataset(data, "detect", format=format, classes=o.parse_classes(classes), image_root=image_root)
    from dynamicvis_cli.data.shards import write_shards  # torch: only once the input is good

    def log(line: str) -> None:
        if not quiet:
            err.print(line, markup=False, highlight=False)

    result = write_shards(spec, output, samples_per_shard=samples_per_shard, overwrite=overwrite, log=log)
    emit({"command": "data shard", "from": spec.format, **result})
