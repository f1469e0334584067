"""Dense scene outputs: ``dvis segment`` (one scene) and ``dvis change`` (two dates).

Tiles are read in workers, run in batches, turned into class probabilities, blended across
overlaps by :class:`DenseStitcher` and written band by band to a COG on the input's exact grid
(uint8 class ids, 255 = no data). Peak memory follows the tile size and the scene width, not its
height. Optionally the class raster is polygonised to a vector file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.geo.crs import check_same_grid, describe_crs
from dynamicvis_cli.geo.read import RasterSource, percentile_stretch
from dynamicvis_cli.geo.write_raster import COGWriter
from dynamicvis_cli.infer.context import (
    InputChecksums,
    RunOptions,
    Timer,
    fit_memory,
    provenance,
    run_model,
    tiling,
)
from dynamicvis_cli.infer.runner import ReaderSpec, RunStats, TileDataset, iterate_batches, stack
from dynamicvis_cli.infer.stitch_dense import DenseStitcher
from dynamicvis_cli.infer.tiling import plan_tiles

NODATA = 255
# Finished rows are handed to the writer in pieces this wide, so the per-piece temporaries
# (probabilities, argmax) stay a few MB however wide the scene is.
EMIT_COLUMNS = 2048


def stitcher_bytes(height: int, width: int, classes: int, tile: int, overlap: int) -> int:
    """What :class:`DenseStitcher` holds at most (float32 sums), plus one emitted piece."""
    from dynamicvis_cli.infer.tiling import TileGrid

    starts = TileGrid.plan(height, width, tile, overlap).row_starts
    carry = tile - min(np.diff(starts)) if len(starts) > 1 else 0
    cells = 4 * (classes + 1) * (min(carry, height) * width + 2 * tile * tile)
    return int(cells + 4 * (classes + 2) * tile * EMIT_COLUMNS)


def _dense_run(
    loaded: LoadedTaskModel,
    specs: Sequence[ReaderSpec],
    grid: RasterSource,
    output: Path,
    opts: RunOptions,
    tags: dict[str, Any],
    *,
    mode: str,
) -> dict[str, Any]:
    classes = loaded.config.classes
    if len(classes) >= NODATA:
        raise DvisUsageError(f"{len(classes)} classes do not fit a uint8 class raster (max {NODATA - 1})")
    tile, overlap = tiling(loaded, opts)
    device = opts.torch_device()
    windows = plan_tiles(grid.height, grid.width, tile, overlap)
    checksums = InputChecksums([s.path for s in specs])  # hashed in the background meanwhile
    memory = fit_memory(loaded, opts, device, tile=tile, bands=len(specs[0].bands), inputs=len(specs),
                        stitcher=stitcher_bytes(grid.height, grid.width, len(classes), tile, overlap))
    timer, stats = Timer(), RunStats()
    counts = np.zeros(len(classes), dtype=np.int64)

    tags.update(tile_size=tile, overlap=overlap)  # the caller's tags: the vector output reuses them
    with COGWriter.like(output, grid, count=1, dtype="uint8", nodata=NODATA, tags=tags,
                        overwrite=opts.overwrite) as writer:

        def emit(window: Window, probs: np.ndarray) -> None:
            known = np.isfinite(probs).all(axis=0)
            ids = np.where(known, np.nan_to_num(probs, nan=-1.0).argmax(axis=0), NODATA).astype(np.uint8)
            counts[:] += np.bincount(ids[known].ravel(), minlength=len(classes))[: len(classes)]
            with timer.stage("write"):
                writer.write(window, ids[None])

        stitcher = DenseStitcher(grid.height, grid.width, len(classes), tile=tile, overlap=overlap,
                                 mode=mode, emit=emit, accumulate="float32",  # type: ignore[arg-type]
                                 emit_columns=EMIT_COLUMNS)
        dataset = TileDataset(specs, windows)
        batches = iterate_batches(dataset, batch_size=opts.batch_size, workers=opts.workers, stats=stats)
        for batch in timer.each(batches, "read"):
            with timer.stage("model"):
                inputs = [stack(batch, i, device) for i in range(len(specs))]
                probs = run_model(loaded, device, opts.precision, *inputs).float().softmax(dim=1).cpu().numpy()
            with timer.stage("stitch"):
                for t, p in zip(batch, probs):
                    stitcher.add(t.window, p, t.valid.numpy())
            if opts.progress:
                opts.progress(min(stats.tiles, len(windows)), len(windows))
        with timer.stage("stitch"):
            stitcher.close()
        with timer.stage("checksum_wait"):
            digest = checksums.result()
        writer.update_tags(inputs_sha256=digest)
        tags["inputs_sha256"] = digest
    timer.lap("cog")  # the intermediate → COG conversion, with its overviews
    summary: dict[str, Any] = {
        "output": str(output),
        "classes": classes,
        "pixels_per_class": {c: int(n) for c, n in zip(classes, counts)},
        "tiles": stats.tiles,
        "tiles_run": stats.tiles - stats.skipped_invalid,
        "tiles_skipped_nodata": stats.skipped_invalid,
        "tile_size": tile,
        "overlap": overlap,
        "batch_size": opts.batch_size,
        "seconds": timer.seconds,
        "provenance": dict(tags),
    }
    if memory is not None:
        summary["memory_plan"] = memory
    return summary


def _vectorise(output: Path, vector: Path, classes: Sequence[str], *, crs_ok: bool,
               simplify: float | None, min_area: float | None, overwrite: bool,
               skip: Sequence[int], tags: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """Polygonise the class raster into ``vector`` (with the raster's provenance tags)."""
    from dynamicvis_cli.geo.polygonise import polygonise
    from dynamicvis_cli.geo.write_vector import write_vectors

    start = time.perf_counter()
    gdf = polygonise(output, classes, skip=skip, simplify=simplify, min_area=min_area)
    write_vectors(gdf, vector, overwrite=overwrite, pixel_coords=not crs_ok, source=output,
                  tags={**tags, "simplify": simplify, "min_area": min_area})
    seconds["vectorise"] = round(time.perf_counter() - start, 3)
    return {"vector": str(vector), "polygons": int(len(gdf))}


def segment_scene(
    loaded: LoadedTaskModel,
    source: Path,
    output: Path,
    *,
    bands: list[int],
    opts: RunOptions,
    vector: Path | None = None,
    simplify: float | None = None,
    min_area: float | None = None,
    stretch: bool = False,
    mode: str = "blend",
    quicklook: Path | None = None,
) -> dict[str, Any]:
    """Segment one scene into a class COG (and optionally polygons); returns the summary."""
    with RasterSource(source) as src:
        bands = src.check_bands(bands)
        spec = ReaderSpec(Path(source), bands, loaded.config.mean, loaded.config.std,
                          percentile_stretch(src, bands) if stretch else None)
        tags = provenance(loaded, [Path(source)], bands=bands, command="segment")
        summary = _dense_run(loaded, [spec], src, Path(output), opts, tags, mode=mode)
        summary.update({"input": str(source), "crs": describe_crs(src.crs), "bands": bands,
                        "width": src.width, "height": src.height})
        crs_ok = src.crs is not None
    if vector is not None:
        summary.update(_vectorise(Path(output), vector, loaded.config.classes, crs_ok=crs_ok, tags=tags,
                                  simplify=simplify, min_area=min_area, overwrite=opts.overwrite, skip=(),
                                  seconds=summary["seconds"]))
    if quicklook is not None:
        from dynamicvis_cli.geo.quicklook import quicklook_classes

        summary["quicklook"] = str(quicklook_classes(Path(source), bands, Path(output), quicklook,
                                                     overwrite=opts.overwrite))
    return summary


def change_scene(
    loaded: LoadedTaskModel,
    before: Path,
    after: Path,
    output: Path,
    *,
    bands: list[int],
    opts: RunOptions,
    align: bool = False,
    resampling: str = "bilinear",
    vector: Path | None = None,
    simplify: float | None = None,
    min_area: float | None = None,
    stretch: bool = False,
    mode: str = "blend",
    quicklook: Path | None = None,
) -> dict[str, Any]:
    """Change map between two dates on the first date's grid.

    The second raster must share CRS, transform and shape with the first
    (:class:`GridMismatchError`, exit 3, names the difference) unless ``align`` warps it onto
    the first grid.
    """
    with RasterSource(before) as a, RasterSource(after) as b:
        bands_a = a.check_bands(bands)
        bands_b = b.check_bands(bands)
        if not align:
            check_same_grid(before, a, after, b)
        specs = [
            ReaderSpec(Path(before), bands_a, loaded.config.mean, loaded.config.std,
                       percentile_stretch(a, bands_a) if stretch else None),
            ReaderSpec(Path(after), bands_b, loaded.config.mean, loaded.config.std,
                       percentile_stretch(b, bands_b) if stretch else None,
                       align_onto=Path(before) if align else None, resampling=resampling),
        ]
        tags = provenance(loaded, [Path(before), Path(after)], bands=bands, command="change",
                          aligned=align)
        summary = _dense_run(loaded, specs, a, Path(output), opts, tags, mode=mode)
        summary.update({"inputs": [str(before), str(after)], "aligned": align,
                        "resampling": resampling if align else None, "crs": describe_crs(a.crs),
                        "bands": bands, "width": a.width, "height": a.height})
        crs_ok = a.crs is not None
    if vector is not None:
        summary.update(_vectorise(Path(output), vector, loaded.config.classes, crs_ok=crs_ok, tags=tags,
                                  simplify=simplify, min_area=min_area, overwrite=opts.overwrite, skip=(0,),
                                  seconds=summary["seconds"]))
    if quicklook is not None:
        from dynamicvis_cli.geo.quicklook import quicklook_classes

        summary["quicklook"] = str(quicklook_classes(Path(after), bands, Path(output), quicklook,
                                                     overwrite=opts.overwrite))
    return summary
