"""``dvis index info`` and ``dvis index verify``: what an archive holds, and whether it is whole.

:func:`verify` runs every check it can and reports each one instead of stopping at the first
problem; :func:`info` assumes a readable archive and summarises it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from shapely import wkb

from dynamicvis_cli.errors import ArchiveError, DvisError
from dynamicvis_cli.retrieval import faiss_index as fi
from dynamicvis_cli.retrieval.archive import (
    VERSION_FILE,
    Archive,
    check_file,
    consistency_problems,
    read_manifest,
    read_sidecar,
)

#: Entries searched for themselves by ``verify`` (spread evenly over the archive).
SELF_SEARCH_SAMPLE = 200


def _run(checks: list[dict[str, Any]], name: str, fn: Callable[[], str | None]) -> bool:
    """Run one check; record it with its detail, or the error that made it fail."""
    try:
        detail = fn()
    except DvisError as exc:
        checks.append({"check": name, "ok": False, "detail": str(exc)})
        return False
    checks.append({"check": name, "ok": True, "detail": detail or ""})
    return True


def verify(path: str | Path) -> dict[str, Any]:
    """Check an archive end to end (nothing is modified).

    Checks: manifest; both files present with the recorded size and SHA-256; FAISS can read the
    index; the sidecar has its columns; index, sidecar and manifest hold the same ids and count;
    the codes in the index equal the sidecar's; a sample of entries finds itself at Hamming
    distance 0 (every one for the exact kind; approximate kinds report the share); footprints
    parse and lie within longitude/latitude bounds; files no version uses (leftovers of a killed
    append, removed by the next append) are listed as warnings.

    Returns:
        ``{"archive", "ok", "version", "count", "kind", "checks": [{"check", "ok", "detail"}],
        "problems": [...], "warnings": [...]}``. Raises only for a path that is no archive at all.
    """
    root = Path(path)
    manifest = read_manifest(root)  # not an archive at all: an error, not a report
    checks: list[dict[str, Any]] = []
    warnings: list[str] = []
    state: dict[str, Any] = {}
    files_ok = all([
        _run(checks, "index file", lambda: check_file(root, manifest, "index")),
        _run(checks, "sidecar file", lambda: check_file(root, manifest, "sidecar")),
    ])

    def read_index() -> str:
        state["index"] = fi.read(root / manifest["index_file"])
        return f"{fi.kind_of(state['index'])}, {state['index'].ntotal} codes of {state['index'].d} bits"

    def read_table() -> str:
        state["table"] = read_sidecar(root / manifest["sidecar_file"])
        return f"{len(state['table'])} rows"

    readable = _run(checks, "index readable", read_index) & _run(checks, "sidecar readable", read_table)
    if readable:
        def agree() -> str:
            problems = consistency_problems(manifest, state["index"], state["table"])
            if problems:
                raise ArchiveError(root, "; ".join(problems))
            return f"{manifest['count']} ids agree"

        if _run(checks, "index and sidecar agree", agree):
            _run(checks, "codes match", lambda: _codes_match(root, manifest, state))
            _run(checks, "self search", lambda: _self_search(root, manifest, state, warnings))
        _run(checks, "footprints", lambda: _footprints(root, state["table"]))
    history = manifest.get("history", [])
    added = sum(int(h.get("added", 0)) for h in history)
    if history and added != int(manifest["next_id"]):
        warnings.append(f"history adds up to {added} entries but next_id is {manifest['next_id']}")
    current = int(manifest["version"])
    for p in sorted(root.iterdir()):
        m = VERSION_FILE.match(p.name)
        if (m and int(m.group(1)) not in (current, current - 1)) or ".tmp-" in p.name:
            warnings.append(f"{p.name}: not part of the archive (left by an interrupted write; "
                            "the next 'dvis index add' removes it)")
    problems = [c["detail"] for c in checks if not c["ok"]]
    return {"archive": str(root), "ok": not problems and files_ok, "version": current,
            "count": int(manifest["count"]), "kind": manifest["index"]["kind"], "checks": checks,
            "problems": problems, "warnings": warnings}


def _codes_match(root: Path, manifest: dict[str, Any], state: dict[str, Any]) -> str:
    ids, codes = fi.codes_of(state["index"])
    order = np.argsort(ids)
    nbytes = int(manifest["codes"]["bits"]) // 8
    table = state["table"]
    side = (np.frombuffer(b"".join(table["code"]), dtype=np.uint8).reshape(-1, nbytes)
            if len(table) else np.zeros((0, nbytes), np.uint8))
    if side.shape != codes.shape or not np.array_equal(codes[order], side):
        bad = int(np.flatnonzero((codes[order] != side).any(axis=1))[0]) if side.shape == codes.shape else 0
        raise ArchiveError(root, f"the codes in the index differ from the sidecar's (first at id "
                                 f"{int(table['id'].iloc[bad])})")
    return f"{len(side)} codes identical"


def _self_search(root: Path, manifest: dict[str, Any], state: dict[str, Any], warnings: list[str]) -> str:
    table, index = state["table"], state["index"]
    if not len(table):
        return "empty archive"
    nbytes = int(manifest["codes"]["bits"]) // 8
    pick = np.unique(np.linspace(0, len(table) - 1, min(SELF_SEARCH_SAMPLE, len(table))).astype(int))
    codes = np.frombuffer(b"".join(table["code"].iloc[pick]), dtype=np.uint8).reshape(-1, nbytes)
    params = manifest["index"]
    fi.set_search_params(index, k=10, ef_search=params.get("ef_search"), nprobe=params.get("nprobe"))
    dist, _ = fi.search(index, codes, min(10, len(table)))
    found = float((dist[:, 0] == 0).mean())
    if manifest["index"]["kind"] == "flat" and found < 1.0:
        raise ArchiveError(root, f"exact search found only {found:.1%} of {len(pick)} entries at distance 0")
    if found < 1.0:
        warnings.append(f"approximate search finds {found:.1%} of sampled entries at distance 0")
    return f"{found:.1%} of {len(pick)} sampled entries found at distance 0"


def _footprints(root: Path, table: Any) -> str:
    for i, blob in enumerate(table["footprint_native"]):
        try:
            wkb.loads(blob)
        except Exception:  # shapely raises GEOSException and others for bad WKB
            entry = int(table["id"].iloc[i])
            raise ArchiveError(root, f"entry {entry}: unreadable native footprint") from None
    geo = table.geometry[table.geometry.notna()]
    if len(geo):
        x0, y0, x1, y1 = geo.total_bounds
        if x0 < -180 - 1e-6 or x1 > 180 + 1e-6 or y0 < -90 - 1e-6 or y1 > 90 + 1e-6:
            raise ArchiveError(
                root, f"WGS84 footprints outside longitude/latitude bounds ({x0}, {y0}, {x1}, {y1})")
    return f"{len(geo)} of {len(table)} entries have a WGS84 footprint"


def info(path: str | Path) -> dict[str, Any]:
    """A summary of an archive (opened and checked as a search would)."""
    archive = Archive.open(path)
    m, table = archive.manifest, archive.table
    geo = table.geometry[table.geometry.notna()]
    dates = sorted(d for d in table["acquired"].dropna().unique())
    label_counts: dict[str, int] = {}
    for text in table["labels"]:
        for label in filter(None, str(text or "").split(";")):
            label_counts[label] = label_counts.get(label, 0) + 1
    root = archive.path
    return {
        "archive": str(root), "version": m["version"], "count": archive.count, "next_id": m["next_id"],
        "created": m.get("created"), "updated": m.get("updated"), "dvis_version": m.get("dvis_version"),
        "codes": m["codes"], "index": m["index"], "model": {k: v for k, v in m["model"].items()
                                                           if k not in ("mean", "std")},
        "chips": m["chips"], "sources": int(table["source"].nunique()),
        "crs": sorted(str(c) for c in table["crs"].dropna().unique()),
        "without_crs": int(table["crs"].isna().sum()),
        "bbox_wgs84": [float(v) for v in geo.total_bounds] if len(geo) else None,
        "acquired": [dates[0], dates[-1]] if dates else None,
        "labels": dict(sorted(label_counts.items())),
        "bytes": {"index": m["index_bytes"], "sidecar": m["sidecar_bytes"]},
        "history": m.get("history", []),
    }
