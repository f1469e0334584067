"""``dvis index build|add|info|verify``: archives of chips for similarity search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer(
    help="Build and maintain archives for `dvis search` (FAISS binary index + GeoParquet footprints).",
    no_args_is_help=True,
)

LabelsOpt = Annotated[Path | None, typer.Option("--labels", help="CSV source,labels (labels separated by ';') giving each source's labels.")]
FolderLabelOpt = Annotated[bool, typer.Option("--label-from-folder", help="Label each source by its parent folder's name.")]


def _warn_random(model: dict[str, Any] | Any, quiet: bool) -> None:
    from dynamicvis_cli.cli.output import err

    if not quiet:
        err.print(f"[yellow]warning:[/] model {model}: random weights; the codes are reproducible but "
                  "meaningless except for testing")


def _labels(path: Path | None) -> Any:
    from dynamicvis_cli.retrieval.chips import read_label_table

    return read_label_table(path) if path is not None else None


@app.command("build")
def build(
    sources: Annotated[list[str], typer.Argument(help="Images, folders (searched recursively) and globs.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The archive to create (a folder, e.g. archive.dvx).")],
    chip_size: Annotated[int, typer.Option("--chip-size", min=16, help="Chip side in px; smaller images are one chip.")] = 256,
    stride: Annotated[int | None, typer.Option("--stride", min=1, help="Pixels between chips (default: the chip size).")] = None,
    min_valid: Annotated[float, typer.Option("--min-valid", min=0.0, max=1.0, help="Skip chips with a smaller share of valid (not nodata) pixels.")] = 0.5,
    code: Annotated[str, typer.Option("--code", help="sign (one bit per dimension) or hash (trivial hashing to --bits).")] = "sign",
    bits: Annotated[int | None, typer.Option("--bits", help="Code length for --code hash (multiple of 8; default 64).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="flat (exact), hnsw or ivf (approximate, for large archives).")] = "flat",
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", min=4, help="HNSW graph degree.")] = 32,
    ef_construction: Annotated[int, typer.Option("--ef-construction", min=8, help="HNSW build effort.")] = 40,
    ef_search: Annotated[int, typer.Option("--ef-search", min=1, help="HNSW search effort (default for searches).")] = 64,
    nlist: Annotated[int | None, typer.Option("--nlist", min=1, help="IVF clusters (default sqrt(n), >= 39 codes each).")] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, help="IVF clusters scanned per query (default nlist/64).")] = None,
    labels: LabelsOpt = None,
    label_from_folder: FolderLabelOpt = False,
    model: o.DefaultModelOpt = None,
    random_weights: o.RandomOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for building a model with random weights.")] = 0,
    bands: o.BandsOpt = None,
    stretch: o.StretchOpt = False,
    batch_size: o.BatchOpt = 16,
    workers: o.WorkersOpt = 0,
    device: o.DeviceOpt = "auto",
    precision: o.PrecisionOpt = o.Precision.fp32,
    overwrite: o.OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Build an archive: chip the sources, embed each chip, store binary codes and footprints."""
    from dynamicvis_cli.cli.common import progress_bar
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.geo.atomic import check_writable
    from dynamicvis_cli.retrieval import ingest
    from dynamicvis_cli.retrieval.archive import ChipSettings
    from dynamicvis_cli.retrieval.codes import code_spec
    from dynamicvis_cli.retrieval.embed import load_embedder
    from dynamicvis_cli.retrieval.faiss_index import IndexParams, check_kind

    check_kind(kind)
    check_writable(output, overwrite=overwrite)
    chosen = o.parse_bands(bands)
    settings = ChipSettings(chip_size=chip_size, stride=stride, min_valid=min_valid, bands=chosen,
                                stretch=stretch)
    label_table = _labels(labels)
    from dynamicvis_cli.checkpoints.registry import default_model

    model = model or default_model("index")
    embedder = load_embedder(model, in_chans=len(chosen) if chosen else None, device=device,
                             precision=precision.value, random_weights=random_weights, seed=seed)
    spec = code_spec(code, embedder.dim, bits)
    if embedder.random:
        _warn_random(model, quiet)
    params = IndexParams(kind=kind, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
                         nlist=nlist, nprobe=nprobe)
    with progress_bar(quiet, "index build") as bar:
        result = ingest.build(output, sources, embedder, code=spec, params=params, settings=settings,
                           labels=label_table, label_from_folder=label_from_folder, overwrite=overwrite,
                           batch_size=batch_size, workers=workers, progress=bar)
    emit({"command": "index build", **result, "model": model, "weights": embedder.weights,
          "random_weights": embedder.random})


@app.command("add")
def add(
    archive: Annotated[Path, typer.Argument(help="An archive made by `dvis index build`.")],
    sources: Annotated[list[str], typer.Argument(help="Images, folders and globs to add (ones already in it are skipped).")],
    labels: LabelsOpt = None,
    label_from_folder: FolderLabelOpt = False,
    batch_size: o.BatchOpt = 16,
    workers: o.WorkersOpt = 0,
    device: o.DeviceOpt = "auto",
    quiet: o.QuietOpt = False,
) -> None:
    """Append sources to an archive as a new version (atomic: a killed run changes nothing).

    The archive's own model, bands and chip settings are used.
    """
    from dynamicvis_cli.cli.common import progress_bar
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.retrieval import ingest
    from dynamicvis_cli.retrieval.archive import Archive

    opened = Archive.open(archive)  # a bad archive fails before torch is even imported
    m = opened.model
    label_table = _labels(labels)
    from dynamicvis_cli.retrieval.embed import load_embedder

    embedder = load_embedder(m["name"], in_chans=int(m["in_chans"]), device=device,
                             random_weights=bool(m["random_weights"]), seed=int(m.get("seed", 0)))
    if embedder.random:
        _warn_random(m["name"], quiet)
    del opened
    with progress_bar(quiet, "index add") as bar:
        result = ingest.append(archive, sources, embedder, labels=label_table,
                               label_from_folder=label_from_folder, batch_size=batch_size, workers=workers,
                               progress=bar)
    emit({"command": "index add", **result, "model": m["name"], "random_weights": embedder.random})


@app.command("info")
def info(archive: Annotated[Path, typer.Argument(help="An archive.")]) -> None:
    """Describe an archive: size, codes, index kind, model, sources, extent, dates, labels."""
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.retrieval.check import info as archive_info

    emit({"command": "index info", **archive_info(archive)})


@app.command("verify")
def verify(archive: Annotated[Path, typer.Argument(help="An archive.")]) -> None:
    """Check an archive end to end; exit 1 (after the JSON report) if anything is wrong."""
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.errors import ArchiveError
    from dynamicvis_cli.retrieval.check import verify as archive_verify

    report = archive_verify(archive)
    emit({"command": "index verify", **report})
    if not report["ok"]:
        more = f" (+{len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise ArchiveError(archive, f"verification failed: {report['problems'][0]}{more}")
