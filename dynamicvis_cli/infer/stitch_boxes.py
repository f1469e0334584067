"""Detections from overlapping tiles → one set of scene detections.

Per tile (:meth:`BoxMerger.add`): boxes are clipped to the tile (the model saw nothing beyond
it), shifted into scene pixels, clipped to the scene, thresholded on score, and the *cut* ones
are dropped when a neighbour saw them whole (the seam rule below). Over the scene
(:meth:`BoxMerger.result`): class-aware NMS (``torchvision.ops.batched_nms``), then the
``max_detections`` best, sorted by score.

Overlap measure. NMS compares boxes by IoU (``match="iou"``), or by the intersection over the
area of the smaller box (``match="ios"``, as SAHI's post-processing offers): IoS is 1 for a box
nested inside another whatever their sizes, so it also drops the part-boxes and nested duplicates
a detector puts inside a larger box of the same object, which IoU keeps (a box half the size of
another has IoU 0.5 with it); it may also drop a small object lying on a larger one of its class.

Seam rule. A box is *cut* when one of its sides lies less than ``edge_margin`` pixels from an
interior side of its tile (a side that is not the scene border): the object probably continues
in the neighbouring tile, and the box covers only the visible part. A cut box is dropped when
another planned tile contains it with at least ``edge_margin`` pixels to spare from that tile's
own interior sides: that tile saw the same pixels away from its edges, so its box for the object
is the better one. A cut box that no other tile contains (an object larger than the overlap) is
kept; its pieces may then come out as separate boxes, so choose an overlap larger than the
objects. ``edge_margin=0`` turns the rule off. The rule assumes every planned tile is run;
tiles skipped as all-nodata are fine, as nodata never yields detections.

Memory. Boxes wait in a pending set. When a new tile row starts at scene row ``r`` and more than
``max_pending`` boxes wait, the decisions that no later tile can change are made now: a box is
*closed* when it ends above ``r`` (later boxes start at or below ``r``, so their IoU with it is
0); greedy NMS decides a box from the boxes ranked above it that overlap it, so a closed box
whose chain of such boxes holds only closed boxes is decided for good and leaves the pending
set. The result is the same as one NMS over the whole scene, only the pending set stays small.

Order. Boxes are ranked by score, ties broken by position (y1, x1, y2, x2) and label, so equal
scores give the same result whatever the tile order or backend.

Payload. Each detection may carry an arbitrary object (``payload``, e.g. its mask as a polygon)
that follows it through the merge untouched; a payload can be made for the admitted detections
only (a callable given the indices), so work such as vectorising masks is spent on the
detections that survive the per-tile rules, and nothing tile-sized has to be kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from rasterio.windows import Window
from torchvision.ops import batched_nms, box_area, box_iou

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.tiling import TileGrid

MaskList = list[tuple[Window, NDArray[np.generic]]]
#: Per-detection payloads: one per detection, or a callable making them for the indices it gets.
Payload = Sequence[Any] | Callable[[NDArray[np.intp]], Sequence[Any]]
#: Overlap measures NMS can use (see the module docstring).
MATCHES = ("iou", "ios")


@dataclass(frozen=True)
class Detections:
    """Scene detections, best first.

    Attributes:
        boxes: (N, 4) float64 ``x1, y1, x2, y2`` in scene pixels (column, row; pixel corners).
        scores: (N,) float32.
        labels: (N,) int64 class indices.
        masks: None when no masks were given; else per detection ``(window, mask)``: the mask
            cropped to the pixels its box touches, ``window`` placing it in the scene.
        payload: None when no payloads were given; else the object given with each detection.
    """

    boxes: NDArray[np.float64]
    scores: NDArray[np.float32]
    labels: NDArray[np.int64]
    masks: MaskList | None = None
    payload: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.scores)


def _take(dets: Detections, index: NDArray[np.intp]) -> Detections:
    masks = None if dets.masks is None else [dets.masks[k] for k in index]
    payload = None if dets.payload is None else [dets.payload[k] for k in index]
    return Detections(dets.boxes[index], dets.scores[index], dets.labels[index], masks, payload)


def _concat(parts: Sequence[Detections]) -> Detections:
    if not parts:
        return Detections(np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64))
    with_masks = any(p.masks is not None for p in parts)
    with_payload = any(p.payload is not None for p in parts)
    return Detections(
        np.concatenate([p.boxes for p in parts]),
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [m for p in parts for m in p.masks or []] if with_masks else None,
        [x for p in parts for x in p.payload or []] if with_payload else None,
    )


def _ranked(dets: Detections) -> Detections:
    """Best first: score descending, then y1, x1, y2, x2, label ascending."""
    b = dets.boxes
    # lexsort sorts by its last key first.
    order = np.lexsort((dets.labels, b[:, 2], b[:, 3], b[:, 0], b[:, 1], -dets.scores))
    return _take(dets, order)


def box_overlap(a: NDArray[np.float64], b: NDArray[np.float64], match: str) -> NDArray[np.float64]:
    """(len(a), len(b)) overlap of ``x1, y1, x2, y2`` boxes of positive area: IoU (``"iou"``), or
    the intersection over the smaller box's area (``"ios"``)."""
    # torch shares the arrays' memory and wants them writable: copy only read-only ones.
    ta, tb = (torch.from_numpy(np.require(x, np.float64, "W")) for x in (a, b))
    if match == "iou":
        return box_iou(ta, tb).numpy()
    wh = torch.min(ta[:, None, 2:], tb[None, :, 2:]) - torch.max(ta[:, None, :2], tb[None, :, :2])
    inter = wh.clamp(min=0).prod(dim=2)
    return (inter / torch.min(box_area(ta)[:, None], box_area(tb)[None, :])).numpy()


def _nms_keep(dets: Detections, threshold: float, match: str = "iou") -> NDArray[np.bool_]:
    """(N,) bool: kept by class-aware greedy NMS, for detections already in rank order."""
    n = len(dets)
    keep = np.zeros(n, dtype=bool)
    if not n:
        return keep
    if match == "iou":
        # Strictly decreasing stand-in scores: NMS sees no ties, only the rank order.
        ranks = torch.arange(n, 0, -1, dtype=torch.float64)
        boxes, labels = torch.from_numpy(dets.boxes), torch.from_numpy(dets.labels)
        keep[batched_nms(boxes, ranks, labels, threshold).numpy()] = True
        return keep
    # torchvision's NMS knows only IoU: greedy per class, each kept box against the boxes below it.
    for label in np.unique(dets.labels):
        idx = np.flatnonzero(dets.labels == label)  # still in rank order
        alive = np.ones(len(idx), dtype=bool)
        for k in range(len(idx)):
            if alive[k]:
                keep[idx[k]] = True
                rest = k + 1 + np.flatnonzero(alive[k + 1 :])
                if len(rest):
                    hit = box_overlap(dets.boxes[idx[k : k + 1]], dets.boxes[idx[rest]], match)[0]
                    alive[rest[hit > threshold]] = False
    return keep


def _as_numpy(values: ArrayLike | torch.Tensor) -> NDArray[np.generic]:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


class BoxMerger:
    """Merge per-tile detections into scene detections (see the module docstring for the rules).

    Attributes:
        grid: the tile plan the tiles must come from.
        peak_pending: the most boxes held undecided at any time (for memory checks).
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        tile: int,
        overlap: int,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.05,
        max_detections: int | None = None,
        edge_margin: float = 2.0,
        max_pending: int = 10_000,
        match: str = "iou",
    ) -> None:
        """Prepare an empty merger for a scene tiled with ``tile`` and ``overlap``.

        Args:
            height: scene rows.
            width: scene columns.
            tile: tile side the tiles were planned with.
            overlap: overlap the tiles were planned with.
            iou_threshold: NMS drops a box whose overlap (``match``) with a better box of its
                class exceeds this.
            score_threshold: boxes scoring below this are dropped as they arrive.
            max_detections: keep at most this many (the best); None keeps all.
            edge_margin: pixels from an interior tile side within which a box counts as cut.
            max_pending: boxes held before decided ones are moved out (at tile-row changes).
            match: NMS's overlap measure, ``"iou"`` or ``"ios"`` (see the module docstring).

        Raises:
            DvisUsageError: invalid sizes, tiling or thresholds.
        """
        self.grid = TileGrid.plan(height, width, tile, overlap)
        if not 0.0 <= iou_threshold <= 1.0:
            raise DvisUsageError(f"--iou-threshold {iou_threshold}: must be between 0 and 1")
        if match not in MATCHES:
            raise DvisUsageError(f"--nms-match {match!r}: must be one of {', '.join(MATCHES)}")
        if max_detections is not None and max_detections < 0:
            raise DvisUsageError(f"--max-detections {max_detections}: must not be negative")
        if edge_margin < 0:
            raise DvisUsageError(f"edge margin {edge_margin}: must not be negative")
        self.iou_threshold = float(iou_threshold)
        self.match = match
        self.score_threshold = float(score_threshold)
        self.max_detections = max_detections
        self.edge_margin = float(edge_margin)
        self.max_pending = max_pending
        self.peak_pending = 0
        self._with_masks: bool | None = None
        self._with_payload: bool | None = None
        self._pending: list[Detections] = []
        self._pending_count = 0
        self._final = _concat([])
        self._row_off = 0
        self._done = False

    def add(
        self,
        window: Window,
        boxes: ArrayLike | torch.Tensor,
        scores: ArrayLike | torch.Tensor,
        labels: ArrayLike | torch.Tensor,
        masks: ArrayLike | torch.Tensor | None = None,
        payload: Payload | None = None,
    ) -> None:
        """Add one tile's detections.

        Args:
            window: the planned tile they come from; tiles must come in row-major order.
            boxes: (N, 4) ``x1, y1, x2, y2`` in tile pixels (numpy or torch).
            scores: (N,) confidences.
            labels: (N,) integer classes.
            masks: optional (N, tile, tile) per-box masks in tile pixels (bool or float); give
                them for every tile or for none.
            payload: optional per-detection objects carried to the result untouched: a sequence
                of N, or a callable that is given the indices (into these N) of the detections
                the tile rules admit and returns one object for each; give it for every tile or
                for none.

        Raises:
            DvisUsageError: an unplanned or out-of-order window, inconsistent shapes or payload
                counts, or a merger whose result was taken.
        """
        if self._done:
            raise DvisUsageError("tile added to a box merger after its result() was taken")
        self.add_admitted(window, self.admit(window, boxes, scores, labels, masks, payload))

    def admit(
        self,
        window: Window,
        boxes: ArrayLike | torch.Tensor,
        scores: ArrayLike | torch.Tensor,
        labels: ArrayLike | torch.Tensor,
        masks: ArrayLike | torch.Tensor | None = None,
        payload: Payload | None = None,
    ) -> Detections:
        """The first half of :meth:`add`: one tile's detections that pass the per-tile rules.

        The rules (clip, shift, score threshold, seam rule) depend only on the tile, the plan
        and the thresholds, never on other tiles, so this may run anywhere (e.g. on another rank
        of a distributed run, on a merger built with the same arguments); the result goes to
        :meth:`add_admitted` of the merger that merges the scene. Arguments as for :meth:`add`.

        Returns:
            The admitted detections in scene pixels, in the tile's own order.
        """
        self.grid.position(window)  # raises for a window that is not a planned tile
        b = _as_numpy(boxes).astype(np.float64).reshape(-1, 4)
        s = _as_numpy(scores).astype(np.float32).reshape(-1)
        lab = _as_numpy(labels).astype(np.int64).reshape(-1)
        if not len(b) == len(s) == len(lab):
            raise DvisUsageError(
                f"tile {window!r}: {len(b)} boxes, {len(s)} scores and {len(lab)} labels"
            )
        m = None if masks is None else _as_numpy(masks)
        if self._with_masks is None:
            self._with_masks = m is not None
        elif self._with_masks != (m is not None):
            raise DvisUsageError(f"tile {window!r}: give masks for every tile or for none")
        tile = self.grid.tile
        if m is not None and m.shape != (len(b), tile, tile):
            raise DvisUsageError(
                f"tile {window!r}: masks have shape {m.shape}, expected {(len(b), tile, tile)}"
            )
        if self._with_payload is None:
            self._with_payload = payload is not None
        elif self._with_payload != (payload is not None):
            raise DvisUsageError(f"tile {window!r}: give a payload for every tile or for none")
        if payload is not None and not callable(payload) and len(payload) != len(b):
            raise DvisUsageError(f"tile {window!r}: {len(b)} boxes and {len(payload)} payloads")
        keep, scene = self._to_scene(window, b, s)
        index = np.flatnonzero(keep)
        pieces = None if m is None else [_crop_mask(window, m[k], scene[k]) for k in index]
        items: list[Any] | None = None
        if payload is not None and not len(index):
            items = []
        elif payload is not None:
            items = list(payload(index)) if callable(payload) else [payload[k] for k in index]
            if len(items) != len(index):
                raise DvisUsageError(
                    f"tile {window!r}: the payload gave {len(items)} objects for {len(index)} "
                    "detections"
                )
        return Detections(scene[index], s[index], lab[index], pieces, items)

    def add_admitted(self, window: Window, dets: Detections) -> None:
        """The second half of :meth:`add`: hold admitted detections of one tile for the NMS.

        Args:
            window: the planned tile they come from; tiles must come in row-major order.
            dets: what :meth:`admit` returned for that tile (here or on another merger).

        Raises:
            DvisUsageError: an unplanned or out-of-order window, or a merger whose result was
                taken.
        """
        if self._done:
            raise DvisUsageError("tile added to a box merger after its result() was taken")
        self.grid.position(window)  # raises for a window that is not a planned tile
        if window.row_off < self._row_off:
            raise DvisUsageError(
                f"{window!r} arrived after a tile at row {self._row_off}: tiles must be added "
                "in plan_tiles order (row-major)"
            )
        if window.row_off > self._row_off:
            if self._pending_count > self.max_pending:
                self._settle(window.row_off)
            self._row_off = int(window.row_off)
        if self._with_payload is None:
            self._with_payload = dets.payload is not None
        if len(dets):
            self._pending.append(dets)
            self._pending_count += len(dets)
            self.peak_pending = max(self.peak_pending, self._pending_count)

    def result(self) -> Detections:
        """Class-aware NMS over the scene; the best ``max_detections``, sorted by score.

        Ends the merge: later :meth:`add` calls are errors, later calls of this return the same.

        Returns:
            :class:`Detections`; empty arrays of the right shapes and dtypes when nothing was found.
        """
        if not self._done:
            self._settle(float("inf"))
            self._done = True
        d = self._final
        masks = None if d.masks is None else list(d.masks)
        payload = None if d.payload is None else list(d.payload)
        if payload is None and self._with_payload:
            payload = []  # payloads were given, but no detection survived
        return Detections(d.boxes.copy(), d.scores.copy(), d.labels.copy(), masks, payload)

    def _to_scene(
        self, window: Window, boxes: NDArray[np.float64], scores: NDArray[np.float32]
    ) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        """Clip to the tile, shift, clip to the scene → (kept (N,) bool, scene boxes (N, 4))."""
        grid, col, row = self.grid, float(window.col_off), float(window.row_off)
        # The part of the scene the model saw, (x, y) of its near and far corners.
        lo = np.array([col, row])
        hi = np.array([min(col + grid.tile, grid.width), min(row + grid.tile, grid.height)])
        scene = boxes + np.array([col, row, col, row])
        scene[:, :2] = np.clip(scene[:, :2], lo, hi)
        scene[:, 2:] = np.clip(scene[:, 2:], lo, hi)
        keep = (scene[:, 2] > scene[:, 0]) & (scene[:, 3] > scene[:, 1])
        keep &= scores >= self.score_threshold
        if self.edge_margin > 0:
            keep &= ~(self._cut(scene, lo, hi) & self._seen_whole_elsewhere(scene))
        return keep, scene

    def _cut(
        self, scene: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]
    ) -> NDArray[np.bool_]:
        """(N,) bool: the box lies within ``edge_margin`` of an interior side of its tile."""
        near_inside = lo > 0  # per axis (x, y): the side is not the scene border
        far_inside = hi < np.array([self.grid.width, self.grid.height])
        at_near = (scene[:, :2] - lo < self.edge_margin) & near_inside
        at_far = (hi - scene[:, 2:] < self.edge_margin) & far_inside
        return np.asarray((at_near | at_far).any(axis=1))

    def _seen_whole_elsewhere(self, scene: NDArray[np.float64]) -> NDArray[np.bool_]:
        """(N,) bool: a planned tile holds the box ``edge_margin`` away from its interior sides.

        A cut box's own tile never qualifies, so this is always another tile.
        """
        grid, m = self.grid, self.edge_margin
        inside = np.ones(len(scene), dtype=bool)
        axes = ((grid.col_starts, grid.width), (grid.row_starts, grid.height))
        for axis, (starts, size) in enumerate(axes):
            start = np.asarray(starts, dtype=np.float64)
            end = np.minimum(start + grid.tile, size)
            safe_lo = np.where(start > 0, start + m, start)
            safe_hi = np.where(end < size, end - m, end)
            lo, hi = scene[:, axis, None], scene[:, axis + 2, None]
            # Rows and columns of tiles are independent: the tile grid is their product.
            inside &= ((safe_lo <= lo) & (hi <= safe_hi)).any(axis=1)
        return inside

    def _settle(self, frontier: float) -> None:
        """Decide the pending boxes that no tile starting at row ``frontier`` or below can touch."""
        pending = _ranked(_concat(self._pending))
        self._pending, self._pending_count = [], 0
        keep = _nms_keep(pending, self.iou_threshold, self.match)
        undecided = self._tainted(pending, pending.boxes[:, 3] > frontier)
        decided_kept = keep & ~undecided
        # An undecided box that a decided, kept, better box suppresses is decided too: dropped.
        waiting = undecided & ~self._suppressed(pending, undecided, decided_kept)
        final = _ranked(_concat([self._final, _take(pending, np.flatnonzero(decided_kept))]))
        # The best k of the decided boxes stay the best k whatever is decided later.
        best = len(final) if self.max_detections is None else min(len(final), self.max_detections)
        self._final = _take(final, np.arange(best))
        if waiting.any():
            self._pending = [_take(pending, np.flatnonzero(waiting))]
            self._pending_count = int(waiting.sum())

    def _overlaps(
        self, dets: Detections, rows: NDArray[np.intp], cols: NDArray[np.intp]
    ) -> NDArray[np.bool_]:
        """(len(rows), len(cols)) bool: same label, overlap above the threshold, as NMS decides."""
        boxes, labels = dets.boxes, dets.labels
        overlap = box_overlap(boxes[rows], boxes[cols], self.match)
        return np.asarray((overlap > self.iou_threshold) & (labels[rows, None] == labels[None, cols]))

    def _tainted(self, dets: Detections, open_: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """(N,) bool over ranked detections: open, or outranked and overlapped by a tainted one.

        Greedy NMS decides a box from the better boxes that overlap it, so exactly these may still
        change their fate when later boxes arrive.
        """
        tainted = open_.copy()
        new = np.flatnonzero(open_)
        while len(new) and not tainted.all():
            rest = np.flatnonzero(~tainted)
            hit = np.zeros(len(rest), dtype=bool)
            for chunk in np.array_split(new, -(-len(new) // 1024)):  # bounded IoU matrices
                better = chunk[:, None] < rest[None, :]
                hit |= (self._overlaps(dets, chunk, rest) & better).any(axis=0)
            new = rest[hit]
            tainted[new] = True
        return tainted

    def _suppressed(
        self, dets: Detections, which: NDArray[np.bool_], by: NDArray[np.bool_]
    ) -> NDArray[np.bool_]:
        """(N,) bool: detections in ``which`` overlapped by a better-ranked one in ``by``."""
        out = np.zeros(len(dets), dtype=bool)
        rows, cols = np.flatnonzero(which), np.flatnonzero(by)
        if len(rows) and len(cols):
            better = cols[None, :] < rows[:, None]
            out[rows] = (self._overlaps(dets, rows, cols) & better).any(axis=1)
        return out


def _crop_mask(
    window: Window, mask: NDArray[np.generic], box: NDArray[np.float64]
) -> tuple[Window, NDArray[np.generic]]:
    """The part of a tile-sized (h, w) mask under its scene box, with its scene window."""
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    col, row = int(window.col_off), int(window.row_off)
    piece = np.array(mask[y0 - row : y1 - row, x0 - col : x1 - col])
    return Window(x0, y0, x1 - x0, y1 - y0), piece
