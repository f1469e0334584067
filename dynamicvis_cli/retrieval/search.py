"""Queries against an archive: parse, embed, search, restrict to a region, describe the hits.

A query is one of:

- ``PATH``: an image file, embedded whole (as the archive's chips were);
- ``PATH@COL,ROW,WIDTH,HEIGHT``: a pixel window of a scene;
- ``id:N``: the entry N of the archive itself (its stored code; no model is loaded).

Image queries are read with the archive's bands and normalisation and embedded by the archive's
model (built under the archive's seed, so random-weight archives answer consistently). A query
whose band count differs from the archive's images is refused unless ``bands`` says which to use.

A region (``bbox`` in longitude/latitude, or polygons from a vector file) keeps only entries whose
WGS84 footprint intersects it; the search is then exact among those entries whatever the index
kind (its cost grows with the number of entries in the region).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window
from shapely import wkb
from shapely.geometry import box, mapping
from shapely.geometry.polygon import orient

from dynamicvis_cli.errors import DvisUsageError, InputNotFoundError
from dynamicvis_cli.retrieval import faiss_index as fi
from dynamicvis_cli.retrieval.archive import Archive
from dynamicvis_cli.retrieval.codes import encode

_WINDOW = re.compile(r"^(?P<path>.+)@(?P<c>-?\d+),(?P<r>-?\d+),(?P<w>\d+),(?P<h>\d+)$")
_ID = re.compile(r"^id:(?P<id>\d+)$")


@dataclass(frozen=True)
class Query:
    """One parsed query (see the module doc)."""

    text: str
    kind: str  # "image", "window" or "id"
    path: Path | None = None
    window: Window | None = None
    id: int | None = None


def parse_query(text: str) -> Query:
    """``PATH``, ``PATH@COL,ROW,WIDTH,HEIGHT`` or ``id:N`` → :class:`Query`.

    Raises:
        InputNotFoundError: the image does not exist.
        DvisUsageError: an empty window.
    """
    text = text.strip()
    m = _ID.match(text)
    if m:
        return Query(text, "id", id=int(m.group("id")))
    m = _WINDOW.match(text)
    if m and not Path(text).exists():
        w, h = int(m.group("w")), int(m.group("h"))
        if w < 1 or h < 1:
            raise DvisUsageError(f"{text}: the window must be at least 1x1 pixels")
        path = Path(m.group("path"))
        if not path.exists():
            raise InputNotFoundError(path, "query image")
        return Query(text, "window", path=path, window=Window(int(m.group("c")), int(m.group("r")), w, h))
    path = Path(text)
    if not path.exists():
        raise InputNotFoundError(path, "query image")
    return Query(text, "image", path=path)


def read_query_file(path: str | Path) -> list[str]:
    """Queries from a text file (``-`` = standard input): one per line, ``#`` comments, blanks skipped."""
    if str(path) == "-":
        lines = sys.stdin.read().splitlines()
    else:
        p = Path(path)
        if not p.is_file():
            raise InputNotFoundError(p, "queries file")
        lines = p.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _query_bands(archive: Archive, path: Path, bands: Sequence[int] | None, in_chans: int) -> list[int]:
    from dynamicvis_cli.geo.read import RasterSource

    with RasterSource(path) as src:
        if bands:
            chosen = src.check_bands(bands)
        else:
            usable = src.count - (1 if src.has_alpha else 0)
            known = archive.manifest.get("source_bands") or []
            if archive.chips.bands:
                chosen = src.check_bands(archive.chips.bands)
            elif known and usable not in known:
                raise DvisUsageError(
                    f"{path}: {usable} band(s), but the archive's images have {'/'.join(map(str, known))}; "
                    f"choose {in_chans} with --bands")
            else:
                chosen = src.resolve_bands(None, in_chans)
    if len(chosen) != in_chans:
        raise DvisUsageError(f"{path}: {len(chosen)} band(s) chosen, the archive's model takes {in_chans}")
    return chosen


def query_codes(archive: Archive, queries: Sequence[Query], *, bands: Sequence[int] | None = None,
                device: str = "auto", embedder: Any = None) -> tuple[NDArray[np.uint8], Any]:
    """Packed codes of ``queries`` (Q, bytes) and the embedder used (None when all are ids)."""
    codes = np.zeros((len(queries), archive.code_spec.nbytes), dtype=np.uint8)
    ids = [q for q in queries if q.kind == "id"]
    if ids:
        codes[[i for i, q in enumerate(queries) if q.kind == "id"]] = archive.codes()[
            archive.positions(np.array([q.id for q in ids], dtype=np.int64))]
    m = archive.model
    images = [(i, q) for i, q in enumerate(queries) if q.kind != "id"]
    # bands are checked for every query before the model is loaded: a bad query fails fast
    chosen = [_query_bands(archive, q.path, bands, int(m["in_chans"])) for _, q in images if q.path]
    if images:
        from dynamicvis_cli.retrieval.embed import read_image  # torch: only for image queries
    if images and embedder is None:
        from dynamicvis_cli.retrieval.embed import load_embedder

        embedder = load_embedder(m["name"], in_chans=int(m["in_chans"]), device=device,
                                 random_weights=bool(m["random_weights"]), seed=int(m.get("seed", 0)))
    for (i, q), use in zip(images, chosen):
        assert q.path is not None
        x, valid = read_image(embedder, q.path, use, window=q.window, stretch=archive.chips.stretch)
        if valid <= 0:
            raise DvisUsageError(f"{q.text}: no valid pixel in the query (nodata or outside the image)")
        codes[i] = encode(embedder.embed(x[None]), archive.code_spec)[0]
    return codes, embedder


def region_mask(archive: Archive, *, bbox: Sequence[float] | None = None,
                within: str | Path | None = None) -> NDArray[np.bool_] | None:
    """Entries whose WGS84 footprint intersects the region; None when no region is given."""
    if bbox is None and within is None:
        return None
    shapes = []
    if bbox is not None:
        if len(bbox) != 4:
            raise DvisUsageError(f"--bbox needs 4 numbers (min_lon,min_lat,max_lon,max_lat), got {len(bbox)}")
        x0, y0, x1, y1 = map(float, bbox)
        if not (x0 < x1 and y0 < y1 and -180 <= x0 and x1 <= 180 and -90 <= y0 and y1 <= 90):
            raise DvisUsageError(
                f"--bbox {x0},{y0},{x1},{y1}: expected min_lon,min_lat,max_lon,max_lat in degrees")
        shapes.append(box(x0, y0, x1, y1))
    if within is not None:
        path = Path(within)
        if not path.exists():
            raise InputNotFoundError(path, "area file")
        try:
            area = gpd.read_file(path)
        except Exception as exc:  # pyogrio's errors vary by driver
            raise DvisUsageError(f"{path}: not a readable vector file ({type(exc).__name__})") from None
        if area.crs is None:
            raise DvisUsageError(f"{path}: the area has no CRS, so it cannot be compared with footprints")
        if not len(area):
            raise DvisUsageError(f"{path}: the area file has no features")
        shapes.append(area.to_crs(4326).union_all())
    region = shapes[0]
    for s in shapes[1:]:
        region = region.intersection(s)
    geom = archive.table.geometry
    hit = geom.notna().to_numpy() & geom.intersects(region).fillna(False).to_numpy()
    return np.asarray(hit, dtype=np.bool_)


def search(
    archive: Archive,
    queries: Sequence[str],
    *,
    k: int = 20,
    bbox: Sequence[float] | None = None,
    within: str | Path | None = None,
    bands: Sequence[int] | None = None,
    ef_search: int | None = None,
    nprobe: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Run ``queries`` and return ``{"hits": [...], "queries": [...], "region_entries", "model"}``.

    Each hit: query (text), query_index, rank (1-based), id, distance (Hamming bits), source,
    window [col, row, width, height], crs, acquired, labels, valid_fraction, footprint (WGS84
    shapely polygon or None), footprint_native (WKT in ``crs``).

    Raises:
        DvisUsageError: no queries, ``k`` < 1 or larger than the archive, bad region or query.
    """
    if not queries:
        raise DvisUsageError("no query given (QUERY arguments or --queries FILE)")
    if k < 1:
        raise DvisUsageError(f"-k {k}: must be at least 1")
    if k > archive.count:
        raise DvisUsageError(f"-k {k}: the archive {archive.path} holds only {archive.count} entries")
    parsed = [parse_query(q) for q in queries]
    mask = region_mask(archive, bbox=bbox, within=within)
    codes, embedder = query_codes(archive, parsed, bands=bands, device=device)
    if mask is None:
        params = archive.params
        fi.set_search_params(archive.index, k=k, ef_search=ef_search or params.ef_search,
                             nprobe=nprobe or params.nprobe)
        dist, ids = fi.search(archive.index, codes, k)
    else:
        all_codes = archive.codes()
        dist, ids = fi.exact_subset_search(all_codes[mask], archive.table["id"].to_numpy()[mask], codes, k)
    hits: list[dict[str, Any]] = []
    summary = []
    for qi, q in enumerate(parsed):
        keep = ids[qi] >= 0
        q_ids, q_dist = ids[qi][keep], dist[qi][keep]
        order = np.lexsort((q_ids, q_dist))  # deterministic order among equal distances
        rows = archive.table.iloc[archive.positions(q_ids[order])] if len(q_ids) else archive.table.iloc[[]]
        for rank, ((_, row), d) in enumerate(zip(rows.iterrows(), q_dist[order]), start=1):
            hits.append(_hit(q, qi, rank, row, int(d)))
        summary.append({"query": q.text, "kind": q.kind, "hits": int(keep.sum())})
    model = archive.model
    return {"hits": hits, "queries": summary,
            "region_entries": None if mask is None else int(mask.sum()),
            "model": model["name"], "weights": model["weights"], "random_weights": model["random_weights"],
            "embedded_queries": embedder is not None}


def _hit(q: Query, qi: int, rank: int, row: Any, distance: int) -> dict[str, Any]:
    native = wkb.loads(row["footprint_native"])
    return {
        "query": q.text, "query_index": qi, "rank": rank, "id": int(row["id"]), "distance": distance,
        "source": row["source"],
        "window": [int(row["col_off"]), int(row["row_off"]), int(row["width"]), int(row["height"])],
        "crs": row["crs"], "acquired": row["acquired"],
        "labels": [x for x in str(row["labels"] or "").split(";") if x],
        "valid_fraction": round(float(row["valid_fraction"]), 4),
        "footprint": row.geometry, "footprint_native": native.wkt,
    }


# -- output -----------------------------------------------------------------------------------


def hits_frame(hits: Sequence[dict[str, Any]]) -> gpd.GeoDataFrame:
    """Hits as a GeoDataFrame in EPSG:4326 (window and labels flattened to text columns)."""
    rows = [{**{k: v for k, v in h.items() if k not in ("footprint", "window", "labels")},
             "col_off": h["window"][0], "row_off": h["window"][1], "width": h["window"][2],
             "height": h["window"][3], "labels": ";".join(h["labels"])} for h in hits]
    columns = ["query", "query_index", "rank", "id", "distance", "source", "col_off", "row_off", "width",
               "height", "crs", "acquired", "labels", "valid_fraction", "footprint_native"]
    return gpd.GeoDataFrame(rows, columns=columns,
                            geometry=gpd.GeoSeries([h["footprint"] for h in hits], crs="EPSG:4326"),
                            crs="EPSG:4326")


def hits_geojson(hits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """An RFC 7946 FeatureCollection (lon/lat, counter-clockwise exterior rings, no ``crs``)."""
    features = []
    for h in hits:
        geom = h["footprint"]
        props = {k: v for k, v in h.items() if k != "footprint"}
        features.append({"type": "Feature", "properties": props,
                         "geometry": None if geom is None else mapping(orient(geom, 1.0))})
    return {"type": "FeatureCollection", "features": features}


def hits_json(hits: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hits as plain JSON values (footprint as a GeoJSON geometry)."""
    return [{**h, "footprint": None if h["footprint"] is None else mapping(orient(h["footprint"], 1.0))}
            for h in hits]
