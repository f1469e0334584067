"""``dvis classify SCENE --regions BOXES``: a class for each given region of a scene.

Each region (any geometry of a vector file, in any CRS) is taken as its bounding box on the
scene's pixel grid. The box is read with context: a square window centred on it, of the model's
tile size, or 1.5 × the box's longer side when the box does not fit into a tile with a quarter
of margin (that window is then resized to the tile size, box and all). The region classifier
pools the box from every FPN level (:class:`~dynamicvis_cli.nn.tasks.RegionClassifier`).

The output keeps every input feature, its geometry and attributes, and adds ``class``,
``class_id`` and ``score``; regions wholly outside the scene, or on nodata only, get no class and
a ``note``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.errors import DvisUsageError, NotGeoreferencedError, VectorReadError
from dynamicvis_cli.geo.crs import describe_crs
from dynamicvis_cli.geo.read import RasterSource, percentile_stretch
from dynamicvis_cli.geo.write_vector import write_vectors
from dynamicvis_cli.infer.context import InputChecksums, RunOptions, Timer, provenance
from dynamicvis_cli.infer.runner import ReaderSpec, TileDataset, autocast

#: Margin around a box, as a fraction of its longer side on each side, that must fit in a tile.
CONTEXT = 0.25


def read_regions(path: Path) -> gpd.GeoDataFrame:
    """The features of a vector file.

    Raises:
        VectorReadError: the file cannot be read, has no features, or has empty geometries only.
    """
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio/fiona errors differ by driver
        raise VectorReadError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    if len(gdf) == 0:
        raise VectorReadError(path, "has no features")
    return gdf


def pixel_boxes(gdf: gpd.GeoDataFrame, src: RasterSource, regions: Path) -> np.ndarray:
    """(N, 4) xyxy boxes in the scene's pixels of each feature's bounds (NaN for empty ones).

    Raises:
        DvisUsageError: the vector file or the scene has no CRS while the other has one.
    """
    if src.crs is not None:
        if gdf.crs is None:
            raise DvisUsageError(f"{regions}: regions have no CRS; the scene is in {describe_crs(src.crs)}")
        gdf = gdf.to_crs(src.crs)
    elif gdf.crs is not None:
        raise DvisUsageError(f"{regions}: regions are in {describe_crs(gdf.crs)} but the scene has no CRS")
    inverse = ~src.transform
    out = np.full((len(gdf), 4), np.nan)
    for i, geom in enumerate(gdf.geometry):
        if geom is None or geom.is_empty:
            continue
        x0, y0, x1, y1 = geom.bounds
        cols, rows = zip(*(inverse * (x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))))
        out[i] = [min(cols), min(rows), max(cols), max(rows)]
    return out


def context_window(box: np.ndarray, tile: int, width: int, height: int) -> tuple[Window, float]:
    """The square window read around ``box`` and the factor from window to tile pixels.

    Centred on the box, then shifted to lie inside the scene where the scene is large enough
    (real context rather than padding; the box stays inside with its margin)."""
    w, h = box[2] - box[0], box[3] - box[1]
    side = tile if max(w, h) * (1 + 2 * CONTEXT) <= tile else int(math.ceil(1.5 * max(w, h)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col, row = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    col = min(max(col, 0), width - side) if side <= width else col
    row = min(max(row, 0), height - side) if side <= height else row
    return Window(col, row, side, side), tile / side


def classify_regions(loaded: LoadedTaskModel, source: Path, regions: Path, output: Path, *,
                     bands: list[int], opts: RunOptions, top_k: int = 1, pixel_coords: bool = False,
                     stretch: bool = False) -> dict[str, Any]:
    """Classify every feature of ``regions`` on ``source``; write them to ``output`` with their class.

    Raises:
        DvisUsageError: a model that is not a region classifier, CRS mismatches.
        NotGeoreferencedError: an ungeoreferenced scene without ``pixel_coords``.
        VectorReadError: unreadable regions.
    """
    if loaded.config.task != "region":
        raise DvisUsageError(f"{loaded.name}: a '{loaded.config.task}' model; --regions needs a region "
                             "classifier (dvis finetune --task region, or a dvis pretrain run's region/)")
    classes = loaded.config.classes
    tile = int(loaded.config.tile_size)
    device = opts.torch_device()
    timer = Timer()
    gdf = read_regions(regions)
    with RasterSource(source) as src:
        if src.crs is None and not pixel_coords:
            raise NotGeoreferencedError(source, output)
        bands = src.check_bands(bands)
        boxes = pixel_boxes(gdf, src, regions)
        spec = ReaderSpec(Path(source), bands, loaded.config.mean, loaded.config.std,
                          percentile_stretch(src, bands) if stretch else None)
        width, height = src.width, src.height
    inside = (~np.isnan(boxes).any(1)) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    inside &= (boxes[:, 0] < width) & (boxes[:, 1] < height)
    todo = np.flatnonzero(inside)
    windows, factors = zip(*(context_window(boxes[i], tile, width, height) for i in todo)) if len(todo) else ((), ())
    dataset = TileDataset([spec], list(windows))
    probs = np.full((len(gdf), len(classes)), np.nan, dtype=np.float32)
    notes: list[str | None] = [None if ok else "outside the scene" for ok in inside]
    checksums = InputChecksums([Path(source), Path(regions)])
    batch_size = max(1, opts.batch_size)
    for start in range(0, len(todo), batch_size):
        idx = list(range(start, min(start + batch_size, len(todo))))
        with timer.stage("read"):
            tiles = [dataset[j] for j in idx]
        images, tile_boxes, keep = [], [], []
        for j, t in zip(idx, tiles):
            k = int(todo[j])
            if not bool(t.valid.any()):
                notes[k] = "no valid pixel"
                continue
            x = t.images[0]
            if x.shape[-1] != tile:
                x = F.interpolate(x[None], size=(tile, tile), mode="bilinear", align_corners=False)[0]
            w = windows[j]
            b = (boxes[k] - [w.col_off, w.row_off, w.col_off, w.row_off]) * factors[j]
            images.append(x)
            tile_boxes.append(torch.tensor(b[None], dtype=torch.float32, device=device))
            keep.append(k)
        if not keep:
            continue
        with timer.stage("model"), torch.inference_mode(), autocast(device, opts.precision):
            logits = loaded.module(torch.stack(images).to(device), tile_boxes)
        probs[keep] = logits.float().softmax(-1).cpu().numpy()
        if opts.progress:
            opts.progress(start + len(idx), len(todo))
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1)
    done = ~np.isnan(probs).any(1)
    out = gdf.copy()
    out["class"] = [classes[order[i, 0]] if done[i] else None for i in range(len(gdf))]
    out["class_id"] = [int(order[i, 0]) if done[i] else None for i in range(len(gdf))]
    out["score"] = [float(probs[i, order[i, 0]]) if done[i] else None for i in range(len(gdf))]
    for r in range(1, min(top_k, len(classes))):
        out[f"class_{r + 1}"] = [classes[order[i, r]] if done[i] else None for i in range(len(gdf))]
        out[f"score_{r + 1}"] = [float(probs[i, order[i, r]]) if done[i] else None for i in range(len(gdf))]
    out["note"] = notes
    tags = provenance(loaded, [Path(source), Path(regions)], checksums=checksums, bands=bands,
                      command="classify", regions=str(regions))
    timer.lap("checksum_wait")
    with timer.stage("write"):
        write_vectors(out, output, overwrite=opts.overwrite, pixel_coords=gdf.crs is None, source=source,
                      tags=tags)
    counts = {c: int((out["class"] == c).sum()) for c in classes}
    return {"input": str(source), "regions": str(regions), "output": str(output),
            "crs": describe_crs(gdf.crs), "features": int(len(gdf)), "classified": int(done.sum()),
            "unclassified": int((~done).sum()), "per_class": counts, "bands": bands,
            "seconds": timer.seconds, "provenance": tags}


__all__ = ["classify_regions", "context_window", "pixel_boxes", "read_regions"]
