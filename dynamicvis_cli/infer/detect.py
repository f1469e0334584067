"""``dvis detect``: boxes over a whole scene, merged across tiles, as polygons on the map.

Per tile the detector's boxes (tile pixels) go to :class:`BoxMerger`, which shifts them into
scene pixels, resolves seam duplicates and runs class-aware NMS over the scene. A box whose
centre falls on an invalid pixel (nodata, masked) is dropped: nodata areas never produce
detections. Scene-pixel boxes become polygons through the raster's affine transform (four
corners, so rotated grids stay right) in the raster's CRS; GeoJSON output is reprojected to
lon/lat by the vector writer.

Instance models (task ``instance``, Mask R-CNN) also predict a mask per detection. Merging is
the same, on the boxes; each detection the tile rules admit has its mask (probability > 0.5,
and only on valid pixels) turned into a polygon while its tile is at hand — pixel edges, holes
kept, the largest 4-connected part when the mask falls apart — and that polygon rides with the
box through the merge (:class:`BoxMerger`'s payload), so no tile-sized mask outlives its tile.
One Polygon per detection keeps every layer a single geometry type. A detection whose mask is
empty keeps its box polygon; the ``geometry_source`` column says which one each row has.

With ``--tta`` each tile is also run flipped/rotated; every pass's boxes (and masks) are mapped
back onto the tile and all go to the merger, whose NMS merges the copies. Under a distributed
run that shares one scene, each rank runs its band of tile rows and applies the per-tile rules
(:meth:`BoxMerger.admit`); rank 0 adds everything in plan order to one merger and writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
import torch
from affine import Affine
from numpy.typing import NDArray
from rasterio import features
from rasterio.windows import Window
from shapely.geometry import Polygon, shape

from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.errors import DvisUsageError, NotGeoreferencedError
from dynamicvis_cli.geo.crs import describe_crs, pixel_to_map
from dynamicvis_cli.geo.read import RasterSource, percentile_stretch
from dynamicvis_cli.geo.write_vector import write_vectors
from dynamicvis_cli.infer.context import (
    InputChecksums,
    RunOptions,
    Timer,
    fit_memory,
    provenance,
    run_model,
    tiling,
)
from dynamicvis_cli.infer.distributed import World, band
from dynamicvis_cli.infer.runner import ReaderSpec, RunStats, Tile, TileDataset, iterate_batches, stack
from dynamicvis_cli.infer.stitch_boxes import BoxMerger, Detections
from dynamicvis_cli.infer.tiling import TileGrid
from dynamicvis_cli.infer.tta import detections as tta_detections
from dynamicvis_cli.infer.tta import transforms as tta_transforms

#: Boxes narrower or lower than this many pixels (after cutting at their tile) are dropped.
MIN_BOX_PIXELS = 1.0


def boxes_to_polygons(boxes: np.ndarray, transform: Any) -> list[Polygon]:
    """(N, 4) xyxy scene-pixel boxes (pixel corners) → polygons in map coordinates."""
    polys = []
    for x1, y1, x2, y2 in boxes:
        cols = np.array([x1, x2, x2, x1])
        rows = np.array([y1, y1, y2, y2])
        xs, ys = pixel_to_map(transform, cols, rows)
        polys.append(Polygon(zip(xs, ys)))
    return polys


def mask_to_polygon(mask: NDArray[np.bool_], col_off: float, row_off: float,
                    transform: Affine) -> Polygon | None:
    """A boolean mask → its largest 4-connected part as a polygon in map coordinates.

    Args:
        mask: (h, w) bool; its pixel (r, c) is scene pixel (row_off + r, col_off + c).
        col_off, row_off: scene-pixel position of the mask's top-left corner.
        transform: the raster's pixel → map affine transform.

    Returns:
        The polygon along pixel edges (holes kept) in the raster's CRS, or None for an empty mask.
    """
    if not mask.any():
        return None
    shift = Affine.translation(col_off, row_off)  # mask pixels → scene pixels
    parts = [shape(geom) for geom, _ in features.shapes(mask.astype(np.uint8), mask=mask,
                                                        connectivity=4, transform=shift)]
    largest = max(parts, key=lambda p: p.area)  # first of equals: shapes' raster order

    def to_map(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack(pixel_to_map(transform, xy[:, 0], xy[:, 1]))

    poly: Polygon = shapely.transform(largest, to_map)
    return poly


def tile_mask_polygons(masks: torch.Tensor, valid: torch.Tensor, window: Window, transform: Affine,
                       index: NDArray[np.intp]) -> list[Polygon | None]:
    """Polygons of some of one tile's predicted masks (see :func:`mask_to_polygon`).

    Args:
        masks: (N, 1, h, w) mask probabilities in tile pixels, on any device.
        valid: (h, w) bool, the tile's valid pixels; masks are cut to them.
        window: the tile's scene window.
        transform: the raster's pixel → map affine transform.
        index: which of the N masks to convert.

    Returns:
        One polygon (or None for a mask with no pixel above 0.5) per index.
    """
    valid = valid.to(masks.device)
    out: list[Polygon | None] = []
    for k in index:
        on = (masks[int(k), 0] > 0.5) & valid
        rows = torch.nonzero(on.any(dim=1)).flatten()
        cols = torch.nonzero(on.any(dim=0)).flatten()
        if not len(rows):
            out.append(None)
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = on[r0:r1, c0:c1].cpu().numpy()
        out.append(mask_to_polygon(crop, window.col_off + c0, window.row_off + r0, transform))
    return out


def _mask_payload(masks: torch.Tensor, tile: Tile, kept: NDArray[np.intp],
                  transform: Affine) -> Callable[[NDArray[np.intp]], list[Polygon | None]]:
    """The merger's payload for one tile: ``index`` (into the ``kept`` detections) → polygons."""

    def make(index: NDArray[np.intp]) -> list[Polygon | None]:
        return tile_mask_polygons(masks, tile.valid, tile.window, transform, kept[index])

    return make


def detect_task(model: str | os.PathLike[str], *, masks: bool = False) -> str:
    """The task ``dvis detect`` loads ``model`` for.

    ``instance`` (boxes and masks) for an instance model, or when ``masks`` is asked for (a
    backbone or random model then gets a Mask R-CNN head); else ``detect`` (FCOS, boxes).

    Raises:
        DvisUsageError: masks asked for with a box-only detection model.
    """
    from dynamicvis_cli.checkpoints.registry import resolve

    config, _ = resolve(model)
    if config.task == "instance":
        return "instance"
    if masks and config.task == "detect":
        raise DvisUsageError(
            f"{model}: a 'detect' model has no mask head; drop --masks or give an instance or backbone model"
        )
    return "instance" if masks else "detect"


def class_filter(model: str | os.PathLike[str], task: str,
                 classes: list[str] | None) -> tuple[list[str] | None, list[str] | None]:
    """What ``--classes`` means for ``model``: ``(classes to keep, classes of a new head)``.

    A model with a head of its own for ``task`` keeps only the named classes (each must be one of
    its classes); a backbone or random model gets a new head with these classes.

    Raises:
        DvisUsageError: a class the model does not know.
    """
    from dynamicvis_cli.checkpoints.registry import resolve

    config, _ = resolve(model)
    if not classes or config.task != task:
        return None, classes
    unknown = [c for c in classes if c not in config.classes]
    if unknown:
        raise DvisUsageError(f"--classes: {', '.join(unknown)} not among {model}'s classes "
                             f"({', '.join(config.classes)})")
    return classes, None


def _lower_score_floor(module: Any, threshold: float) -> None:
    """Let the detector pass boxes down to the user's threshold (the merger applies it)."""
    fcos = getattr(module, "fcos", None)
    if fcos is not None:
        fcos.score_thresh = min(threshold, 0.05)
    maskrcnn = getattr(module, "maskrcnn", None)
    if maskrcnn is not None:
        maskrcnn.roi_heads.score_thresh = min(threshold, 0.05)


def detect_scene(
    loaded: LoadedTaskModel,
    source: Path,
    output: Path,
    *,
    bands: list[int],
    opts: RunOptions,
    threshold: float = 0.3,
    iou_threshold: float = 0.5,
    nms_match: str = "iou",
    max_detections: int | None = None,
    pixel_coords: bool = False,
    stretch: bool = False,
    quicklook: Path | None = None,
    keep_classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Detect objects in one scene and write them as polygons; returns the summary.

    An instance model (``loaded.config.task == "instance"``) writes each detection's mask as its
    polygon (see the module docstring). ``keep_classes``: only these classes are detected (the
    others are dropped in each tile, before the seams are merged).
    """
    classes = loaded.config.classes
    wanted = np.array([1 + classes.index(c) for c in keep_classes] if keep_classes else [], dtype=np.int64)
    with_masks = loaded.config.task == "instance"
    tile, overlap = tiling(loaded, opts)
    coarsest = 2 * loaded.config.backbone.reductions[-1]  # the FPN's extra max-pooled level
    if tile < 2 * coarsest:
        # torchvision's detection heads normalise each level with GroupNorm, which needs more
        # than one value per group: the stride-64 level must be at least 2 x 2.
        raise DvisUsageError(f"--tile-size {tile}: detection needs tiles of at least {2 * coarsest} px")
    device = opts.torch_device()
    passes = tta_transforms(opts.tta)
    world: World = opts.world if opts.world is not None else World()
    _lower_score_floor(loaded.module, threshold)
    with RasterSource(source) as src:
        if src.crs is None and not pixel_coords:
            raise NotGeoreferencedError(source, output)
        bands = src.check_bands(bands)
        plan = TileGrid.plan(src.height, src.width, tile, overlap)
        mine = band(plan.row_starts, src.height, tile, world.rank, world.size, dense=False)
        ncols = len(plan.col_starts)
        windows = [plan.window(i, j) for i in range(*mine.run) for j in range(ncols)]
        merger = BoxMerger(src.height, src.width, tile=tile, overlap=overlap, iou_threshold=iou_threshold,
                           score_threshold=threshold, max_detections=max_detections, match=nms_match)
        spec = ReaderSpec(Path(source), bands, loaded.config.mean, loaded.config.std,
                          percentile_stretch(src, bands) if stretch else None)
        # Hashed in the background meanwhile (by the rank that writes the output).
        checksums = InputChecksums([Path(source)]) if world.main else None
        memory = fit_memory(loaded, opts, device, tile=tile, bands=len(bands), inputs=1, stitcher=0)
        timer, stats = Timer(), RunStats()

        def predict(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return run_model(loaded, device, opts.precision, x)  # type: ignore[no-any-return]

        admitted: list[tuple[int, int, Detections]] = []  # (tile row, tile column, detections)
        error: BaseException | None = None
        try:
            batches = iterate_batches(TileDataset([spec], windows), batch_size=opts.batch_size,
                                      workers=opts.workers, stats=stats)
            for batch in timer.each(batches, "read"):
                with timer.stage("model"):
                    images = stack(batch, 0, device)
                    results = predict(images) if len(passes) == 1 else tta_detections(predict, images, passes)
                for t, r in zip(batch, results):
                    boxes = r["boxes"].float().cpu().numpy()
                    valid = t.valid.numpy()
                    h, w = valid.shape
                    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(int), 0, w - 1)
                    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(int), 0, h - 1)
                    labels = r["labels"].cpu().numpy()
                    # FCOS's class 0 is background (never a training target): not a detection.
                    keep = (valid[cy, cx] & (labels >= 1)) if len(boxes) else np.zeros(0, dtype=bool)
                    if len(wanted):
                        keep &= np.isin(labels, wanted)
                    # Under a pixel on a side (after cutting at the tile) is not an object at this
                    # resolution, and would collapse to a line in 7-decimal GeoJSON.
                    bw = np.minimum(boxes[:, 2], w) - np.maximum(boxes[:, 0], 0)
                    bh = np.minimum(boxes[:, 3], h) - np.maximum(boxes[:, 1], 0)
                    keep &= (bw >= MIN_BOX_PIXELS) & (bh >= MIN_BOX_PIXELS)
                    kept = np.flatnonzero(keep)
                    payload = _mask_payload(r["masks"], t, kept, src.transform) if with_masks else None
                    dets = merger.admit(t.window, boxes[keep], r["scores"].float().cpu().numpy()[keep],
                                        labels[keep] - 1, payload=payload)
                    if world.distributed:
                        admitted.append((*plan.position(t.window), dets))
                    else:
                        merger.add_admitted(t.window, dets)
                timer.lap("merge")
                if opts.progress:
                    opts.progress(min(stats.tiles, len(windows)), len(windows))
        except Exception as exc:  # handed to every rank by agree(); re-raised here alone
            error = exc
        world.agree(error)
        share: dict[str, Any] = {"admitted": admitted, "tiles": stats.tiles, "skipped": stats.skipped_invalid,
                                 "model_s": timer.seconds.get("model", 0.0)}
        shares = world.gather(share)
        if not world.main:
            return {"rank": world.rank, "tiles": stats.tiles, "seconds": timer.seconds}
        assert shares is not None and checksums is not None
        if world.distributed:
            # Plan order, as one process would have added them: the merge is then the same.
            for i, j, dets in sorted((x for share in shares for x in share["admitted"]),
                                     key=lambda x: (x[0], x[1])):
                merger.add_admitted(plan.window(i, j), dets)
            timer.lap("merge")
        tiles_total = sum(x["tiles"] for x in shares)
        tiles_skipped = sum(x["skipped"] for x in shares)
        det = merger.result()
        mask_polys = det.payload if det.payload is not None else [None] * len(det)
        from_mask = [p is not None for p in mask_polys]
        box_polys = boxes_to_polygons(det.boxes, src.transform)
        geoms = [m if m is not None else b for m, b in zip(mask_polys, box_polys)]
        gdf = gpd.GeoDataFrame(
            {
                "class_id": det.labels.astype(int),
                "class": [classes[i] if 0 <= i < len(classes) else str(i) for i in det.labels],
                "score": det.scores.astype(float),
                "x1": det.boxes[:, 0], "y1": det.boxes[:, 1], "x2": det.boxes[:, 2], "y2": det.boxes[:, 3],
                "geometry_source": ["mask" if m else "box" for m in from_mask],
            },
            geometry=geoms, crs=src.crs,
        )
        timer.lap("merge")
        tags = provenance(loaded, [Path(source)], checksums=checksums, bands=bands, command="detect",
                          tile_size=tile, overlap=overlap, threshold=threshold, iou_threshold=iou_threshold,
                          nms_match=nms_match, max_detections=max_detections, masks=with_masks,
                          tta=opts.tta if opts.tta != "none" else None,
                          keep_classes=list(keep_classes) if keep_classes else None)
        timer.lap("checksum_wait")
        write_vectors(gdf, output, overwrite=opts.overwrite, pixel_coords=src.crs is None, source=source,
                      tags=tags)
        timer.lap("write")
        if quicklook is not None:
            from dynamicvis_cli.geo.quicklook import quicklook_boxes

            quicklook_boxes(Path(source), bands, det.boxes, det.labels, quicklook, overwrite=opts.overwrite)
        counts = {c: int((det.labels == i).sum()) for i, c in enumerate(classes)
                  if not keep_classes or c in keep_classes}
        return {
            "input": str(source), "output": str(output), "crs": describe_crs(src.crs),
            "quicklook": str(quicklook) if quicklook else None,
            "detections": int(len(det.scores)), "per_class": counts, "threshold": threshold,
            "masks": with_masks, "mask_polygons": int(sum(from_mask)),
            "tiles": tiles_total, "tiles_run": tiles_total - tiles_skipped,
            "tiles_skipped_nodata": tiles_skipped, "batch_size": opts.batch_size,
            "tile_size": tile, "overlap": overlap, "tta": opts.tta, "bands": bands, "seconds": timer.seconds,
            "provenance": tags, **({"memory_plan": memory} if memory is not None else {}),
            **({"ranks": {"count": world.size, "model_s": [x["model_s"] for x in shares]}}
               if world.distributed else {}),
        }
