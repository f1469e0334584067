"""Sources → chips → codes → a new archive, or a new version of one (see :mod:`.archive`).

:func:`build` writes a whole archive under a temporary name and renames it into place;
:func:`append` writes the next version's files and then swaps the manifest, under the archive's
lock. Both embed first and write last, so the slow part never holds half-written files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd
from numpy.typing import NDArray
from shapely import wkb

from dynamicvis_cli._version import __version__
from dynamicvis_cli.errors import ArchiveError, DvisUsageError, OutputExistsError
from dynamicvis_cli.geo.atomic import atomic_output
from dynamicvis_cli.retrieval import faiss_index as fi
from dynamicvis_cli.retrieval.archive import (
    COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    Archive,
    ChipSettings,
    ProgressFn,
    clean,
    crash_point,
    locked,
    now_iso,
    read_manifest,
    write_manifest,
    write_version,
)
from dynamicvis_cli.retrieval.chips import expand_sources, footprints, plan_chips, raster_info
from dynamicvis_cli.retrieval.codes import CodeSpec, encode

if TYPE_CHECKING:  # embed imports torch
    from dynamicvis_cli.retrieval.embed import Embedder


# -- sources → rows -----------------------------------------------------------------------------


@dataclass
class Embedded:
    """New rows (without ids), their embeddings, and what was skipped."""

    rows: pd.DataFrame
    geometry: list[Any]
    embeddings: NDArray[np.float32]
    sources: list[str]
    chips_planned: int
    skipped_nodata: int
    source_bands: set[int]


def usable_bands(count: int, has_alpha: bool) -> int:
    return count - 1 if has_alpha else count


def embed_sources(
    embedder: Embedder,
    paths: Sequence[Path],
    settings: ChipSettings,
    *,
    labels: dict[Path, list[str]] | None = None,
    label_from_folder: bool = False,
    batch_size: int = 16,
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> Embedded:
    """Cut each source into chips, embed them, and describe each kept chip as a sidecar row."""
    from dynamicvis_cli.geo.read import RasterSource
    from dynamicvis_cli.retrieval.embed import embed_chip_images, embed_windows, reader_spec

    plans = []
    source_bands: set[int] = set()
    for path in paths:
        info = raster_info(path)
        with RasterSource(path) as src:
            bands = (src.check_bands(settings.bands) if settings.bands
                     else src.resolve_bands(None, embedder.in_chans, default=embedder.config.band_indexes))
            source_bands.add(usable_bands(src.count, src.has_alpha))
        if len(bands) != embedder.in_chans:
            raise DvisUsageError(
                f"{path}: {len(bands)} band(s) selected but the model takes {embedder.in_chans}")
        plans.append((info, bands, plan_chips(info.height, info.width, settings.chip_size,
                                                    settings.stride or settings.chip_size)))
    total = sum(len(w) for _, _, w in plans)
    # Per source: (indices of kept windows, their embeddings, valid shares). Scenes are embedded
    # window by window; single-chip images are batched across files.
    empty = np.zeros((0, embedder.dim), dtype=np.float32)
    kept: list[tuple[list[int], NDArray[np.float32], list[float]]] = [([], empty, []) for _ in plans]
    singles = [i for i, (_, _, windows) in enumerate(plans) if len(windows) == 1]
    skipped = 0
    done = 0
    if singles:
        tick = None if progress is None else (lambda n: progress(n, total))
        items = [(plans[i][0].path, plans[i][1], plans[i][2][0]) for i in singles]
        got_single = embed_chip_images(embedder, items, min_valid=settings.min_valid, batch_size=batch_size,
                                       stretch=settings.stretch, progress=tick)
        for i, (e, frac) in zip(singles, got_single):
            if e is None:
                skipped += 1
            else:
                kept[i] = ([0], e[None], [frac])
        done = len(singles)
    for i, (info, bands, windows) in enumerate(plans):
        if len(windows) == 1:
            continue
        spec = reader_spec(embedder, info.path, bands, stretch=settings.stretch)
        tick = None if progress is None else (lambda n, b=done: progress(b + n, total))
        got = embed_windows(embedder, spec, windows, batch_size=batch_size, workers=workers,
                            min_valid=settings.min_valid, progress=tick)
        done += len(windows)
        skipped += got.skipped_nodata
        kept[i] = (got.indices, got.embeddings, list(got.valid_fraction))
    records: list[dict[str, Any]] = []
    geoms: list[Any] = []
    parts: list[NDArray[np.float32]] = []
    for (info, _, windows), (indices, emb_i, fractions) in zip(plans, kept):
        parts.append(np.asarray(emb_i, dtype=np.float32))
        chip_labels = list((labels or {}).get(info.path, []))
        if label_from_folder:
            chip_labels = [info.path.parent.name, *[c for c in chip_labels if c != info.path.parent.name]]
        crs_text = info.crs.to_string() if info.crs is not None else None
        for pos, frac in zip(indices, fractions):
            w = windows[pos]
            native, lonlat = footprints(w, info.transform, info.crs)
            records.append({
                "source": str(info.path), "col_off": int(w.col_off), "row_off": int(w.row_off),
                "width": int(w.width), "height": int(w.height), "crs": crs_text,
                "footprint_native": wkb.dumps(native), "acquired": info.acquired,
                "labels": ";".join(chip_labels), "valid_fraction": float(frac),
            })
            geoms.append(lonlat)
    emb = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    return Embedded(pd.DataFrame.from_records(records, columns=COLUMNS[1:11]), geoms, emb,
                    [str(p) for p in paths], total, skipped, source_bands)


def _frame(new: Embedded, codes: NDArray[np.uint8], first_id: int, version: int) -> gpd.GeoDataFrame:
    rows = new.rows.copy()
    rows.insert(0, "id", np.arange(first_id, first_id + len(rows), dtype=np.int64))
    rows["version"] = np.int32(version)
    rows["code"] = [bytes(c) for c in codes]
    return gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries(new.geometry, crs="EPSG:4326"), crs="EPSG:4326")


# -- building and appending ---------------------------------------------------------------------


def _base_manifest(embedder: Embedder, code: CodeSpec, params: fi.IndexParams,
                   settings: ChipSettings) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dvis_version": __version__,
        "created": now_iso(), "updated": now_iso(), "version": 0, "count": 0, "next_id": 0,
        "codes": code.to_dict(), "index": params.to_dict(), "model": embedder.describe(),
        "chips": asdict(settings), "source_bands": [], "history": [],
    }


def build(
    path: str | Path,
    sources: Sequence[str],
    embedder: Embedder,
    *,
    code: CodeSpec,
    params: fi.IndexParams,
    settings: ChipSettings,
    labels: dict[Path, list[str]] | None = None,
    label_from_folder: bool = False,
    overwrite: bool = False,
    batch_size: int = 16,
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build a new archive at ``path`` from ``sources``; the folder appears complete or not at all.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        ArchiveError: ``path`` exists and is not an archive (never replaced, even with overwrite).
        DvisUsageError: bad sources or settings; no chip with enough valid pixels.
    """
    root = Path(path)
    if root.exists() and overwrite and not (root / MANIFEST).is_file():
        raise ArchiveError(root, "exists and is not a dvis archive; refusing to replace it")
    if root.exists() and not overwrite:
        raise OutputExistsError(root)
    paths = expand_sources(sources)
    new = embed_sources(embedder, paths, settings, labels=labels, label_from_folder=label_from_folder,
                        batch_size=batch_size, workers=workers, progress=progress)
    if not len(new.rows):
        raise DvisUsageError(f"no chip of the {len(paths)} source(s) has {settings.min_valid:.0%} valid "
                             "pixels; "
                             "nothing to index (lower --min-valid?)")
    codes = encode(new.embeddings, code)
    index = fi.new_index(code.bits, params, codes)
    ids = np.arange(len(codes), dtype=np.int64)
    fi.add(index, codes, ids)
    table = _frame(new, codes, 0, 1)
    recorded = settings
    if not settings.bands and embedder.config.band_indexes:
        # the bands the checkpoint was trained on, read by default: recorded, so that appends and
        # queries read them too
        recorded = replace(settings, bands=list(embedder.config.band_indexes))
    manifest = _base_manifest(embedder, code, params, recorded)
    with atomic_output(root, overwrite=overwrite, directory=True) as tmp:
        files = write_version(tmp, 1, index, table)
        manifest.update(files, version=1, count=len(table), next_id=len(table),
                        index=params.to_dict(), source_bands=sorted(new.source_bands))
        manifest["history"].append({"version": 1, "time": now_iso(), "added": len(table),
                                    "sources": len(paths), "command": "build"})
        write_manifest(tmp, manifest)
    return {"archive": str(root), "version": 1, "count": len(table), "added": len(table),
            "sources": len(paths), "chips_planned": new.chips_planned,
            "chips_skipped_nodata": new.skipped_nodata,
            "codes": code.to_dict(), "index": params.to_dict()}


def append(
    path: str | Path,
    sources: Sequence[str],
    embedder: Embedder,
    *,
    labels: dict[Path, list[str]] | None = None,
    label_from_folder: bool = False,
    batch_size: int = 16,
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Add the chips of ``sources`` to an archive as a new version (see the module doc).

    Sources already in the archive (same resolved path) are skipped, so re-running an append
    over a growing folder adds only the new files.
    """
    root = Path(path)
    archive = Archive.open(root)  # a damaged archive is refused before the lock file is created
    with locked(root):
        if read_manifest(root)["version"] != archive.manifest["version"]:
            archive = Archive.open(root)  # another append finished meanwhile
        manifest = dict(archive.manifest)
        current = int(manifest["version"])
        clean(root, {current, current - 1})  # leftovers of a killed append
        known = set(archive.table["source"])
        paths = expand_sources(sources)
        todo = [p for p in paths if str(p) not in known]
        skipped = [str(p) for p in paths if str(p) in known]
        result = {"archive": str(root), "sources": len(todo), "skipped_sources": skipped}
        if not todo:
            return {**result, "version": current, "count": archive.count, "added": 0,
                    "chips_planned": 0, "chips_skipped_nodata": 0}
        new = embed_sources(embedder, todo, archive.chips, labels=labels, label_from_folder=label_from_folder,
                            batch_size=batch_size, workers=workers, progress=progress)
        codes = encode(new.embeddings, archive.code_spec)
        version = current + 1
        first = int(manifest["next_id"])
        fi.add(archive.index, codes, np.arange(first, first + len(codes), dtype=np.int64))
        added = _frame(new, codes, first, version)
        parts = [t for t in (archive.table, added) if len(t)]
        table = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326")
        files = write_version(root, version, archive.index, table)
        manifest.update(files, version=version, count=len(table), next_id=first + len(codes),
                        updated=now_iso(),
                        source_bands=sorted(set(manifest.get("source_bands", [])) | new.source_bands))
        manifest["history"] = [*manifest.get("history", []), {
            "version": version, "time": now_iso(), "added": len(codes), "sources": len(todo),
            "command": "add"}]
        crash_point("before-swap")
        write_manifest(root, manifest)
        clean(root, {version, current})
    return {**result, "version": version, "count": len(table), "added": len(codes),
            "chips_planned": new.chips_planned, "chips_skipped_nodata": new.skipped_nodata}
