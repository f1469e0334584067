"""``dvis bench``: end-to-end megapixels per second and peak memory against scene size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


@app.command("bench")
def bench(
    scene: Annotated[list[str] | None, typer.Option("--scene", help="Scene side in pixels, or WIDTHxHEIGHT (repeat for a series), or a GeoTIFF to run as it is.")] = None,
    layout: Annotated[str, typer.Option("--layout", help="Generated scenes: tiled (512 blocks) or striped.")] = "tiled",
    model: o.ModelOpt = "tiny",
    classes: Annotated[int, typer.Option("--classes", min=1, max=254, help="Classes of the random head.")] = 2,
    tile_size: Annotated[int, typer.Option("--tile-size", min=32)] = 512,
    overlap: Annotated[int, typer.Option("--overlap", min=0)] = 64,
    batch_size: o.BatchOpt = 4,
    workers: o.WorkersOpt = 0,
    device: o.DeviceOpt = "cpu",
    precision: o.PrecisionOpt = o.Precision.fp32,
    max_memory: o.MaxMemoryOpt = None,
    memory_limit: Annotated[str | None, typer.Option("--memory-limit", help="Run each scene in a Linux memory cgroup of this size (e.g. 4G), where one can be made.")] = None,
    no_vector: Annotated[bool, typer.Option("--no-vector", help="Skip the polygon stage.")] = False,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Folder for the generated scenes (default: the system's temp).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON report here.")] = None,
    quiet: o.QuietOpt = False,
) -> None:
    """Run dvis segment (read → model → stitch → COG → polygons) on generated scenes of growing size.

    Prints one JSON report on stdout and a Markdown table on stderr. The model has random weights
    (tiny by default): this measures the engine and the backbone's speed, not accuracy.
    """
    import json

    from dynamicvis_cli.bench import BenchOptions, bench_sizes, parse_scene_size, table
    from dynamicvis_cli.cli.output import emit, err
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.geo.atomic import atomic_output

    sizes: list[int | str] = []
    given = None
    for item in scene or ["2000", "5000"]:
        if item.replace("x", "").isdigit():
            parse_scene_size(item)
            sizes.append(item)
        elif Path(item).is_file():
            if given is not None or sizes:
                raise DvisUsageError("--scene: give sizes or one GeoTIFF, not both")
            given = Path(item)
        else:
            raise DvisUsageError(f"--scene {item!r}: neither a size in pixels nor an existing file")
    opts = BenchOptions(model=model, classes=classes, tile=tile_size, overlap=overlap, batch=batch_size,
                        workers=workers, device=device, precision=precision.value, vector=not no_vector,
                        max_memory=max_memory)
    log = None if quiet else (lambda row: err.print(json.dumps(row)))
    from dynamicvis_cli.infer.memory import parse_size

    limit = parse_size(memory_limit) if memory_limit else None
    report = bench_sizes(sizes, opts, layout=layout, scene=given, workdir=workdir, log=log, limit=limit)
    if out is not None:
        with atomic_output(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    if not quiet:
        err.print(table(report), markup=False)
    emit(report)
