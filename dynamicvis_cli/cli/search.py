"""``dvis search``: the archive's chips most similar to query images, windows or entries."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


class Format(str, Enum):
    table = "table"
    json = "json"
    geojson = "geojson"


def _bbox(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not min_lon,min_lat,max_lon,max_lat",
                                 param_hint="--bbox") from None
    if len(values) != 4:
        raise typer.BadParameter("expected 4 numbers: min_lon,min_lat,max_lon,max_lat", param_hint="--bbox")
    return values


def _table(hits: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in ("query", "rank", "distance", "id", "source", "window", "centre (lon, lat)", "labels"):
        table.add_column(col, justify="right" if col in ("rank", "distance", "id") else "left")
    for h in hits:
        fp = h["footprint"]
        centre = "" if fp is None else f"{fp.centroid.x:.5f}, {fp.centroid.y:.5f}"
        table.add_row(h["query"], str(h["rank"]), str(h["distance"]), str(h["id"]), Path(h["source"]).name,
                      ",".join(map(str, h["window"])), centre, ";".join(h["labels"]))
    Console(soft_wrap=True).print(table)


@app.command("search")
def search(
    archive: Annotated[Path, typer.Argument(help="An archive made by `dvis index build`.")],
    queries: Annotated[list[str] | None, typer.Argument(help="Image files, PATH@COL,ROW,WIDTH,HEIGHT windows, or id:N entries.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Hits per query.")] = 20,
    queries_file: Annotated[str | None, typer.Option("--queries", help="File of queries, one per line ('-': stdin).")] = None,
    fmt: Annotated[Format | None, typer.Option("--format", help="stdout format (default: table on a terminal, else json).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write hits to .geojson, .gpkg, .parquet, .fgb or .csv.")] = None,
    bbox: Annotated[str | None, typer.Option("--bbox", help="Keep hits whose footprint meets min_lon,min_lat,max_lon,max_lat.")] = None,
    within: Annotated[Path | None, typer.Option("--within", help="Keep hits whose footprint meets the polygons of this vector file.")] = None,
    bands: o.BandsOpt = None,
    ef_search: Annotated[int | None, typer.Option("--ef-search", min=1, help="HNSW search effort (default: the archive's).")] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, help="IVF clusters scanned (default: the archive's).")] = None,
    device: o.DeviceOpt = "auto",
    overwrite: o.OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Search an archive. Each hit has rank, Hamming distance, source, window and footprint.

    Without -o the hits go to stdout (--format); with -o they go to the file and stdout gets the
    JSON summary.
    """
    from dynamicvis_cli.cli.output import emit, err
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.geo.atomic import check_writable
    from dynamicvis_cli.retrieval.archive import Archive
    from dynamicvis_cli.retrieval.search import hits_geojson, hits_json, read_query_file
    from dynamicvis_cli.retrieval.search import search as run_search

    texts = list(queries or []) + (read_query_file(queries_file) if queries_file else [])
    if output is not None:
        if output.suffix.lower() not in (".geojson", ".json", ".gpkg", ".parquet", ".fgb", ".csv"):
            raise DvisUsageError(f"{output}: write hits to .geojson, .json, .gpkg, .parquet, .fgb or .csv")
        check_writable(output, overwrite=overwrite)
    opened = Archive.open(archive)
    if opened.model["random_weights"] and not quiet and any(not t.startswith("id:") for t in texts):
        err.print(f"[yellow]warning:[/] {archive}: built with random weights; hits are meaningless "
                  "except for testing")
    result = run_search(opened, texts, k=k, bbox=_bbox(bbox), within=within, bands=o.parse_bands(bands),
                        ef_search=ef_search, nprobe=nprobe, device=device)
    hits = result.pop("hits")
    summary = {"command": "search", "archive": str(archive), "k": k, **result}
    if output is not None:
        _write(hits, output, overwrite)
        emit({**summary, "hits": len(hits), "output": str(output)})
        return
    chosen = fmt or (Format.table if sys.stdout.isatty() else Format.json)
    if chosen is Format.table:
        _table(hits)
    elif chosen is Format.geojson:
        sys.stdout.write(json.dumps(hits_geojson(hits), default=str) + "\n")
    else:
        emit({**summary, "hits": hits_json(hits)})


def _write(hits: list[dict[str, Any]], output: Path, overwrite: bool) -> None:
    from dynamicvis_cli.geo.atomic import atomic_output
    from dynamicvis_cli.geo.write_vector import write_vectors
    from dynamicvis_cli.retrieval.search import hits_frame

    frame = hits_frame(hits)
    if output.suffix.lower() == ".csv":
        frame["footprint_wgs84"] = frame.geometry.to_wkt()
        text = frame.drop(columns="geometry").to_csv(index=False)
        with atomic_output(output, overwrite=overwrite) as tmp:
            tmp.write_text(text, encoding="utf-8")
    else:
        write_vectors(frame, output, overwrite=overwrite)
