"""``dvis detect``: boxes over a whole scene, merged across tiles, as polygons on the map.

Per tile the detector's boxes (tile pixels) go to :class:`BoxMerger`, which shifts them into
scene pixels, resolves seam duplicates and runs class-aware NMS over the scene. A box whose
centre falls on an invalid pixel (nodata, masked) is dropped: nodata areas never produce
detections. Scene-pixel boxes become polygons through the raster's affine transform (four
corners, so rotated grids stay right) in the raster's CRS; GeoJSON output is reprojected to
lon/lat by the vector writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from shapely.geometry import Polygon

from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.errors import NotGeoreferencedError
from dynamicvis_cli.geo.crs import describe_crs, pixel_to_map
from dynamicvis_cli.geo.read import RasterSource, percentile_stretch
from dynamicvis_cli.geo.write_vector import write_vectors
from dynamicvis_cli.infer.context import RunOptions, Timer, provenance, run_model, tiling
from dynamicvis_cli.infer.runner import ReaderSpec, RunStats, TileDataset, iterate_batches, stack
from dynamicvis_cli.infer.stitch_boxes import BoxMerger
from dynamicvis_cli.infer.tiling import plan_tiles


def boxes_to_polygons(boxes: np.ndarray, transform: Any) -> list[Polygon]:
    """(N, 4) xyxy scene-pixel boxes (pixel corners) → polygons in map coordinates."""
    polys = []
    for x1, y1, x2, y2 in boxes:
        cols = np.array([x1, x2, x2, x1])
        rows = np.array([y1, y1, y2, y2])
        xs, ys = pixel_to_map(transform, cols, rows)
        polys.append(Polygon(zip(xs, ys)))
    return polys


def detect_scene(
    loaded: LoadedTaskModel,
    source: Path,
    output: Path,
    *,
    bands: list[int],
    opts: RunOptions,
    threshold: float = 0.3,
    iou_threshold: float = 0.5,
    max_detections: int | None = None,
    pixel_coords: bool = False,
    stretch: bool = False,
    quicklook: Path | None = None,
) -> dict[str, Any]:
    """Detect objects in one scene and write them as polygons; returns the summary."""
    classes = loaded.config.classes
    tile, overlap = tiling(loaded, opts)
    device = opts.torch_device()
    fcos = getattr(loaded.module, "fcos", None)
    if fcos is not None:
        fcos.score_thresh = min(threshold, 0.05)  # the merger applies the user's threshold
    with RasterSource(source) as src:
        if src.crs is None and not pixel_coords:
            raise NotGeoreferencedError(source, output)
        bands = src.check_bands(bands)
        windows = plan_tiles(src.height, src.width, tile, overlap)
        merger = BoxMerger(src.height, src.width, tile=tile, overlap=overlap, iou_threshold=iou_threshold,
                           score_threshold=threshold, max_detections=max_detections)
        spec = ReaderSpec(Path(source), bands, loaded.config.mean, loaded.config.std,
                          percentile_stretch(src, bands) if stretch else None)
        timer, stats = Timer(), RunStats()
        for batch in iterate_batches(TileDataset([spec], windows), batch_size=opts.batch_size,
                                     workers=opts.workers, stats=stats):
            results = run_model(loaded, device, opts.precision, stack(batch, 0, device))
            timer.lap("read_and_model")
            for t, r in zip(batch, results):
                boxes = r["boxes"].float().cpu().numpy()
                valid = t.valid.numpy()
                h, w = valid.shape
                cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(int), 0, w - 1)
                cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(int), 0, h - 1)
                labels = r["labels"].cpu().numpy()
                # FCOS's class 0 is background (never a training target): not a detection.
                keep = (valid[cy, cx] & (labels >= 1)) if len(boxes) else np.zeros(0, dtype=bool)
                merger.add(t.window, boxes[keep], r["scores"].float().cpu().numpy()[keep],
                           labels[keep] - 1)
            timer.lap("merge")
            if opts.progress:
                opts.progress(min(stats.tiles, len(windows)), len(windows))
        det = merger.result()
        geoms = boxes_to_polygons(det.boxes, src.transform)
        gdf = gpd.GeoDataFrame(
            {
                "class_id": det.labels.astype(int),
                "class": [classes[i] if 0 <= i < len(classes) else str(i) for i in det.labels],
                "score": det.scores.astype(float),
                "x1": det.boxes[:, 0], "y1": det.boxes[:, 1], "x2": det.boxes[:, 2], "y2": det.boxes[:, 3],
            },
            geometry=geoms, crs=src.crs,
        )
        write_vectors(gdf, output, overwrite=opts.overwrite, pixel_coords=src.crs is None, source=source)
        timer.lap("write")
        if quicklook is not None:
            from dynamicvis_cli.geo.quicklook import quicklook_boxes

            quicklook_boxes(Path(source), bands, det.boxes, det.labels, quicklook, overwrite=opts.overwrite)
        counts = {c: int((det.labels == i).sum()) for i, c in enumerate(classes)}
        return {
            "input": str(source), "output": str(output), "crs": describe_crs(src.crs),
            "quicklook": str(quicklook) if quicklook else None,
            "detections": int(len(det.scores)), "per_class": counts, "threshold": threshold,
            "tiles": stats.tiles, "tiles_skipped_nodata": stats.skipped_invalid,
            "tile_size": tile, "overlap": overlap, "bands": bands, "seconds": timer.seconds,
            "provenance": provenance(loaded, [Path(source)], bands=bands, command="detect"),
        }
