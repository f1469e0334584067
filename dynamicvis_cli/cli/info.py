"""``dvis info``: what an output file is and which model, weights, settings and input made it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("info")
def info(
    path: Annotated[Path, typer.Argument(help="A raster (.tif) or vector (.geojson, .gpkg, .parquet, .fgb) output.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of lines.")] = False,
) -> None:
    """Show a file's format, grid or layer, and the provenance dvis wrote into it."""
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.geo.info import describe_output

    described = describe_output(path)
    if as_json:
        emit(described)
        return
    provenance = described.pop("provenance", {}) or {}
    width = max((len(k) for k in [*described, *provenance]), default=0)
    for key, value in described.items():
        typer.echo(f"{key:<{width}}  {value}")
    typer.echo("provenance:" if provenance else "provenance: none (not written by dvis)")
    for key, value in provenance.items():
        typer.echo(f"  {key:<{width}}  {value}")
