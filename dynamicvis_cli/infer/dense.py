"""Dense scene outputs: ``dvis segment`` (one scene) and ``dvis change`` (two dates).

Tiles are read in workers, run in batches, turned into class probabilities, blended across
overlaps by :class:`DenseStitcher` and written band by band to a COG on the input's exact grid
(uint8 class ids, 255 = no data). Peak memory follows the tile size and the scene width, not its
height. Optionally the class raster is polygonised to a vector file.

With ``--tta`` each tile's probabilities are the average of its flipped/rotated passes
(:mod:`~dynamicvis_cli.infer.tta`), taken before blending. Under a distributed run that shares
one scene (:mod:`~dynamicvis_cli.infer.distributed`), each rank stitches the band of rows it
owns from every tile covering them (so the result is the one-process result), and rank 0 writes
all bands into the COG.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from dynamicvis_cli.infer.distributed import Band, World, band
from dynamicvis_cli.infer.runner import ReaderSpec, RunStats, TileDataset, iterate_batches
from dynamicvis_cli.infer.runner import stack as stack_tiles
from dynamicvis_cli.infer.stitch_dense import DenseStitcher, canonical_mode
from dynamicvis_cli.infer.tiling import TileGrid
from dynamicvis_cli.infer.tta import dense_probabilities
from dynamicvis_cli.infer.tta import transforms as tta_transforms

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
    """Tiles → probabilities (TTA-averaged) → stitched class ids → COG at ``output``.

    With ``opts.world`` (several ranks share the scene, see :mod:`~dynamicvis_cli.infer.distributed`)
    each rank runs and stitches its band of tile rows; rank 0 alone writes ``output`` and returns
    the scene's summary, the others return their share of it.
    """
    classes = loaded.config.classes
    if len(classes) >= NODATA:
        raise DvisUsageError(f"{len(classes)} classes do not fit a uint8 class raster (max {NODATA - 1})")
    mode = canonical_mode(mode)
    passes = tta_transforms(opts.tta)
    tile, overlap = tiling(loaded, opts)
    device = opts.torch_device()
    world: World = opts.world if opts.world is not None else World()
    plan = TileGrid.plan(grid.height, grid.width, tile, overlap)
    bands = [band(plan.row_starts, grid.height, tile, r, world.size, dense=True) for r in range(world.size)]
    mine = bands[world.rank]
    ncols = len(plan.col_starts)
    windows = [plan.window(i, j) for i in range(*mine.run) for j in range(ncols)]
    owned_rows = set(plan.row_starts[mine.owned[0] : mine.owned[1]])
    y0, y1 = mine.pixels
    # Hashed in the background meanwhile (by the rank that writes the tags).
    checksums = InputChecksums([s.path for s in specs]) if world.main else None
    memory = fit_memory(loaded, opts, device, tile=tile, bands=len(specs[0].bands), inputs=len(specs),
                        stitcher=stitcher_bytes(grid.height, grid.width, len(classes), tile, overlap))
    timer, stats = Timer(), RunStats()
    counts = np.zeros(len(classes), dtype=np.int64)
    owned_run = 0

    tags.update(tile_size=tile, overlap=overlap)  # the caller's tags: the vector output reuses them
    if mode != "cosine":
        tags.update(blend=mode)
    if opts.tta != "none":
        tags.update(tta=opts.tta)
    with contextlib.ExitStack() as stack:
        writer: COGWriter | None = None
        error: BaseException | None = None
        try:
            if world.main:
                writer = stack.enter_context(COGWriter.like(
                    output, grid, count=1, dtype="uint8", nodata=NODATA, tags=tags, overwrite=opts.overwrite))
            held = None if world.main else stack.enter_context(_BandFile(y1 - y0, grid.width))

            def emit(window: Window, probs: np.ndarray) -> None:
                if not y0 <= window.row_off < y1:  # another rank's rows (windows never straddle)
                    return
                known = np.isfinite(probs).all(axis=0)
                ids = np.where(known, np.nan_to_num(probs, nan=-1.0).argmax(axis=0), NODATA).astype(np.uint8)
                counts[:] += np.bincount(ids[known].ravel(), minlength=len(classes))[: len(classes)]
                with timer.stage("write"):
                    if writer is not None:
                        writer.write(window, ids[None])
                    else:
                        assert held is not None
                        held.write(window, y0, ids)

            stitcher = DenseStitcher(grid.height, grid.width, len(classes), tile=tile, overlap=overlap,
                                     mode=mode, emit=emit, accumulate="float32", emit_columns=EMIT_COLUMNS)

            def predict(*x: torch.Tensor) -> torch.Tensor:
                return run_model(loaded, device, opts.precision, *x)  # type: ignore[no-any-return]

            dataset = TileDataset(specs, windows)
            batches = iterate_batches(dataset, batch_size=opts.batch_size, workers=opts.workers, stats=stats)
            for batch in timer.each(batches, "read"):
                with timer.stage("model"):
                    inputs = [stack_tiles(batch, i, device) for i in range(len(specs))]
                    probs = dense_probabilities(predict, inputs, passes).cpu().numpy()
                with timer.stage("stitch"):
                    for t, p in zip(batch, probs):
                        stitcher.add(t.window, p, t.valid.numpy())
                        owned_run += t.window.row_off in owned_rows
                if opts.progress:
                    opts.progress(min(stats.tiles, len(windows)), len(windows))
            with timer.stage("stitch"):
                stitcher.close()
        except Exception as exc:  # handed to every rank by agree(); re-raised here alone
            error = exc
        world.agree(error)
        owned = (mine.owned[1] - mine.owned[0]) * ncols
        share: dict[str, Any] = {"counts": counts, "tiles": owned, "run": owned_run,
                                 "recomputed": stats.tiles - owned,
                                 "model_s": timer.seconds.get("model", 0.0)}
        shares = world.gather(share)
        if world.distributed:
            with timer.stage("gather"):
                _exchange_bands(world, bands, grid.width, writer, held)
        if not world.main:
            return {"rank": world.rank, "tiles": owned, "tiles_run": owned_run, "seconds": timer.seconds}
        assert shares is not None and writer is not None and checksums is not None
        counts = np.sum([x["counts"] for x in shares], axis=0)
        total, run = sum(x["tiles"] for x in shares), sum(x["run"] for x in shares)
        with timer.stage("checksum_wait"):
            digest = checksums.result()
        writer.update_tags(inputs_sha256=digest)
        tags["inputs_sha256"] = digest
    timer.lap("cog")  # the intermediate → COG conversion, with its overviews
    summary: dict[str, Any] = {
        "output": str(output),
        "classes": classes,
        "pixels_per_class": {c: int(n) for c, n in zip(classes, counts)},
        "tiles": total,
        "tiles_run": run,
        "tiles_skipped_nodata": total - run,
        "tile_size": tile,
        "overlap": overlap,
        "blend": mode,
        "tta": opts.tta,
        "batch_size": opts.batch_size,
        "seconds": timer.seconds,
        "provenance": dict(tags),
    }
    if world.distributed:
        recomputed = int(sum(x["recomputed"] for x in shares))
        summary["ranks"] = {"count": world.size, "tiles_recomputed": recomputed,
                            "model_s": [x["model_s"] for x in shares]}
    if memory is not None:
        summary["memory_plan"] = memory
    return summary


#: Rows of class ids per message when ranks hand their band to rank 0 (~8 MB per message).
EXCHANGE_BYTES = 8 << 20


class _BandFile:
    """A rank's class ids for its band of scene rows, in an anonymous temporary file."""

    def __init__(self, rows: int, width: int) -> None:
        self.rows, self.width = rows, width
        self._file: Any = None
        self.array: np.ndarray | None = None

    def __enter__(self) -> _BandFile:
        import tempfile

        self._file = tempfile.TemporaryFile(prefix="dvis-band-")
        if self.rows * self.width:
            self._file.truncate(self.rows * self.width)
            self.array = np.memmap(self._file, dtype=np.uint8, mode="r+", shape=(self.rows, self.width))
        return self

    def __exit__(self, *exc: object) -> None:
        self.array = None
        self._file.close()

    def write(self, window: Window, y0: int, ids: np.ndarray) -> None:
        assert self.array is not None
        r, c = int(window.row_off) - y0, int(window.col_off)
        self.array[r : r + ids.shape[0], c : c + ids.shape[1]] = ids


def _exchange_bands(world: World, bands: Sequence[Band], width: int, writer: COGWriter | None,
                    held: _BandFile | None) -> None:
    """Every rank's band of class ids → rank 0's writer, in chunks of :data:`EXCHANGE_BYTES`."""
    step = max(1, EXCHANGE_BYTES // max(width, 1))
    for rank in range(1, world.size):
        y0, y1 = bands[rank].pixels
        for r in range(y0, y1, step):
            h = min(step, y1 - r)
            if world.main:
                assert writer is not None
                chunk = torch.empty((h, width), dtype=torch.uint8)
                world.recv(chunk, rank)
                writer.write(Window(0, r, width, h), chunk.numpy()[None])
            elif world.rank == rank:
                assert held is not None and held.array is not None
                world.send(torch.from_numpy(np.ascontiguousarray(held.array[r - y0 : r - y0 + h])), 0)


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
    mode: str = "cosine",
    quicklook: Path | None = None,
) -> dict[str, Any]:
    """Segment one scene into a class COG (and optionally polygons); returns the summary.

    ``mode``: the tile weights, ``linear``, ``cosine`` or ``centre`` (``blend`` and ``crop`` are
    aliases of the last two); ``opts.tta`` averages flipped/rotated passes per tile;
    ``opts.world`` splits the scene's tiles across the ranks of a distributed run.
    """
    with RasterSource(source) as src:
        bands = src.check_bands(bands)
        spec = ReaderSpec(Path(source), bands, loaded.config.mean, loaded.config.std,
                          percentile_stretch(src, bands) if stretch else None)
        tags = provenance(loaded, [Path(source)], bands=bands, command="segment")
        summary = _dense_run(loaded, [spec], src, Path(output), opts, tags, mode=mode)
        if "rank" in summary:  # another rank of a distributed run: rank 0 writes the rest
            return summary
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
    mode: str = "cosine",
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
        if "rank" in summary:  # another rank of a distributed run: rank 0 writes the rest
            return summary
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
