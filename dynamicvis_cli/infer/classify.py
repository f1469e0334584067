"""``dvis classify``: a label per image (chips), or per grid cell of one scene.

Images are read whole (they are chips) and run at their own size, so chips of different sizes
need no resizing. ``--grid CELL`` cuts a scene into CELL × CELL cells (the last row/column of
cells is partial, padded when read) and writes one polygon per cell with its class and score;
cells with no valid pixel are skipped.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from rasterio.windows import Window

from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.errors import DvisUsageError, NotGeoreferencedError
from dynamicvis_cli.geo.atomic import atomic_output
from dynamicvis_cli.geo.crs import describe_crs
from dynamicvis_cli.geo.read import RasterSource, percentile_stretch
from dynamicvis_cli.geo.write_vector import write_vectors
from dynamicvis_cli.infer.detect import boxes_to_polygons
from dynamicvis_cli.infer.context import InputChecksums, RunOptions, Timer, provenance, run_model
from dynamicvis_cli.infer.runner import ReaderSpec, RunStats, TileDataset, iterate_batches, stack

MAX_CHIP_SIDE = 4096


def _records(probs: np.ndarray, classes: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    out = []
    for p in probs:
        order = np.argsort(-p)[:top_k]
        out.append({"class": classes[order[0]], "class_id": int(order[0]), "score": float(p[order[0]]),
                    "top": [{"class": classes[i], "score": float(p[i])} for i in order]})
    return out


def classify_images(
    loaded: LoadedTaskModel,
    sources: Sequence[Path],
    *,
    bands: Sequence[int] | None,
    opts: RunOptions,
    top_k: int = 3,
    stretch: bool = False,
) -> list[dict[str, Any]]:
    """One record per image: path, class, score and the top-k classes.

    ``bands`` None: the bands the checkpoint was trained on, else each image's first bands."""
    classes = loaded.config.classes
    device = opts.torch_device()
    expected = loaded.config.backbone.in_chans
    records = []
    for i, path in enumerate(sources):
        with RasterSource(path) as src:
            if max(src.width, src.height) > MAX_CHIP_SIDE:
                raise DvisUsageError(
                    f"{path}: {src.width}x{src.height} px is a scene, not a chip; "
                    "use --grid CELL to classify it cell by cell")
            chosen = src.resolve_bands(list(bands) if bands else None, expected,
                                       default=loaded.config.band_indexes)
            spec = ReaderSpec(Path(path), chosen, loaded.config.mean, loaded.config.std,
                              percentile_stretch(src, chosen) if stretch else None)
            dataset = TileDataset([spec], [Window(0, 0, src.width, src.height)])
            tile = dataset[0]
        if not bool(tile.valid.any()):
            records.append({"input": str(path), "class": None, "score": None, "note": "no valid pixel"})
            continue
        logits = run_model(loaded, device, opts.precision, tile.images[0][None].to(device))
        rec = _records(logits.float().softmax(-1).cpu().numpy(), classes, top_k)[0]
        records.append({"input": str(path), **rec})
        if opts.progress:
            opts.progress(i + 1, len(sources))
    return records


def write_records(records: Sequence[dict[str, Any]], output: Path, *, overwrite: bool) -> None:
    """``.csv`` (input, class, score) or ``.json`` (everything), atomically."""
    if output.suffix.lower() == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["input", "class", "score"])
        for r in records:
            writer.writerow([r["input"], r["class"], "" if r["score"] is None else f"{r['score']:.6f}"])
        text = buf.getvalue()
    elif output.suffix.lower() == ".json":
        text = json.dumps(records, indent=1) + "\n"
    else:
        raise DvisUsageError(f"{output}: classify writes .csv or .json (or vectors with --grid)")
    with atomic_output(output, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def grid_windows(height: int, width: int, cell: int) -> list[Window]:
    """Row-major CELL × CELL windows from the top-left; the last ones reach past the edge."""
    return [Window(c, r, cell, cell) for r in range(0, height, cell) for c in range(0, width, cell)]


def classify_grid(
    loaded: LoadedTaskModel,
    source: Path,
    output: Path,
    *,
    cell: int,
    bands: list[int],
    opts: RunOptions,
    pixel_coords: bool = False,
    stretch: bool = False,
) -> dict[str, Any]:
    """One polygon per grid cell (clipped to the scene) with class, class_id and score."""
    if cell < 16:
        raise DvisUsageError(f"--grid {cell}: cells must be at least 16 px")
    classes = loaded.config.classes
    device = opts.torch_device()
    timer, stats = Timer(), RunStats()
    with RasterSource(source) as src:
        if src.crs is None and not pixel_coords:
            raise NotGeoreferencedError(source, output)
        bands = src.check_bands(bands)
        windows = grid_windows(src.height, src.width, cell)
        spec = ReaderSpec(Path(source), bands, loaded.config.mean, loaded.config.std,
                          percentile_stretch(src, bands) if stretch else None)
        rows: list[dict[str, Any]] = []
        geoms = []
        checksums = InputChecksums([Path(source)])  # hashed in the background meanwhile
        batches = iterate_batches(TileDataset([spec], windows), batch_size=opts.batch_size,
                                  workers=opts.workers, stats=stats)
        for batch in timer.each(batches, "read"):
            with timer.stage("model"):
                probs = run_model(loaded, device, opts.precision, stack(batch, 0, device))
                probs = probs.float().softmax(-1).cpu().numpy()
            for t, rec in zip(batch, _records(probs, classes, 1)):
                w = t.window
                x1, y1 = w.col_off, w.row_off
                x2, y2 = min(x1 + w.width, src.width), min(y1 + w.height, src.height)
                geoms.append(boxes_to_polygons(np.array([[x1, y1, x2, y2]]), src.transform)[0])
                rows.append({"row": int(y1 // cell), "col": int(x1 // cell), "class": rec["class"],
                             "class_id": rec["class_id"], "score": rec["score"],
                             "valid_fraction": float(t.valid.float().mean())})
            timer.lap("cells")
            if opts.progress:
                opts.progress(min(stats.tiles, len(windows)), len(windows))
        gdf = gpd.GeoDataFrame(rows, columns=["row", "col", "class", "class_id", "score", "valid_fraction"],
                               geometry=geoms, crs=src.crs)
        tags = provenance(loaded, [Path(source)], checksums=checksums, bands=bands, command="classify",
                          cell=cell)
        timer.lap("checksum_wait")
        write_vectors(gdf, output, overwrite=opts.overwrite, pixel_coords=src.crs is None, source=source,
                      tags=tags)
        timer.lap("write")
        counts = {c: int((gdf["class"] == c).sum()) for c in classes}
        return {"input": str(source), "output": str(output), "crs": describe_crs(src.crs), "cell": cell,
                "cells": int(len(gdf)), "cells_skipped_nodata": stats.skipped_invalid, "per_class": counts,
                "bands": bands, "seconds": timer.seconds, "provenance": tags}
