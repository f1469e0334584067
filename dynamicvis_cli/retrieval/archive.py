"""The on-disk archive: a FAISS binary index and a GeoParquet sidecar, versioned as one.

Layout of ``NAME.dvx/`` (a folder)::

    manifest.json     names the current version and records everything needed to use it
    v000001.index     FAISS IndexBinaryIDMap2 (flat, HNSW or IVF) of the codes, by archive id
    v000001.parquet   GeoParquet: one row per chip (id, source, window, footprints, date, labels,
                      code), sorted by id; geometry = WGS84 footprint
    .lock             held (flock) by the process that is appending

Writing is in :mod:`.ingest` (:func:`~.ingest.build`, :func:`~.ingest.append`); this module holds
the format: versions, manifest, lock, and opening with every check.

The index and the sidecar of a version are written in full under new names, flushed to disk,
and only then does an atomic ``os.replace`` of ``manifest.json`` make them current. The manifest
records each file's size and SHA-256, and every open checks them and that the index and the
sidecar hold the same ids, so a pair that disagrees is never used: an append killed at any point
leaves the previous version current and intact (its leftovers are removed by the next append).
The previous version's files are kept, so a reader that read the old manifest a moment before a
swap still finds them; older ones are deleted.

Ids are 0, 1, 2, ... in the order chips were added and are never reused or renumbered.

Test hook: with ``DVIS_TEST_CRASH_AT=after-index`` (new index written, sidecar not yet) or
``before-swap`` (both written, manifest not replaced) an append kills its own process with
SIGKILL at that point; tests use it to check that a killed append leaves the archive usable.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from numpy.typing import NDArray

from dynamicvis_cli.errors import ArchiveError, DvisUsageError, InputNotFoundError
from dynamicvis_cli.retrieval import faiss_index as fi
from dynamicvis_cli.retrieval.codes import CodeSpec

FORMAT = "dvis-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
CRASH_ENV = "DVIS_TEST_CRASH_AT"
COLUMNS = ["id", "source", "col_off", "row_off", "width", "height", "crs", "footprint_native",
           "acquired", "labels", "valid_fraction", "version", "code"]
VERSION_FILE = re.compile(r"^v(\d{6})\.(index|parquet)$")

ProgressFn = Callable[[int, int], None]


@dataclass
class ChipSettings:
    """How sources are cut into chips; fixed at build time, reused by every append.

    Attributes:
        chip_size: chip side in pixels; images no larger than this are one chip.
        stride: pixels between chip origins.
        min_valid: minimum share of valid (not nodata) pixels for a chip to be kept.
        bands: 1-based bands read from every source, or None for the first ones.
        stretch: scale each source by its 2-98 % percentiles instead of by data type.
    """

    chip_size: int = 256
    stride: int | None = None
    min_valid: float = 0.5
    bands: list[int] | None = None
    stretch: bool = False

    def __post_init__(self) -> None:
        self.stride = self.stride or self.chip_size
        if self.chip_size < 16:
            raise DvisUsageError(f"--chip-size {self.chip_size}: chips must be at least 16 px")
        if self.stride < 1:
            raise DvisUsageError(f"--stride {self.stride}: must be at least 1 px")
        if not 0.0 <= self.min_valid <= 1.0:
            raise DvisUsageError(f"--min-valid {self.min_valid}: must be between 0 and 1")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# -- files of a version -------------------------------------------------------------------------


def _names(version: int) -> tuple[str, str]:
    return f"v{version:06d}.index", f"v{version:06d}.parquet"


def write_version(root: Path, version: int, index: Any, table: gpd.GeoDataFrame) -> dict[str, Any]:
    """Write a version's two files (each under a temporary name, flushed, then renamed)."""
    idx_name, par_name = _names(version)
    tmp = root / f".{idx_name}.tmp-{os.getpid()}"
    fi.write(index, tmp)
    os.replace(tmp, root / idx_name)
    crash_point("after-index")
    tmp = root / f".{par_name}.tmp-{os.getpid()}"
    table.to_parquet(tmp, index=False)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, root / par_name)
    _fsync_dir(root)
    return {
        "index_file": idx_name, "index_bytes": (root / idx_name).stat().st_size,
        "index_sha256": sha256(root / idx_name),
        "sidecar_file": par_name, "sidecar_bytes": (root / par_name).stat().st_size,
        "sidecar_sha256": sha256(root / par_name),
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / f".{MANIFEST}.tmp-{os.getpid()}"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / MANIFEST)
    _fsync_dir(root)


def clean(root: Path, keep: set[int]) -> list[str]:
    """Delete temporaries and version files not in ``keep``; the names removed."""
    removed = []
    for p in root.iterdir():
        m = VERSION_FILE.match(p.name)
        stale_version = m is not None and int(m.group(1)) not in keep
        if stale_version or (p.name.startswith(".") and ".tmp-" in p.name):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the archive's write lock; another writer gets a clear error instead of waiting."""
    with (root / LOCK).open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError(
                root, "another dvis process is writing this archive; try again later") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# -- reading --------------------------------------------------------------------------------------


class Archive:
    """An archive opened for reading: manifest, index and sidecar, checked against each other.

    Attributes:
        path: the archive folder.
        manifest: the parsed manifest.json.
        index: the FAISS index (IndexBinaryIDMap2).
        table: the sidecar (GeoDataFrame, WGS84 geometry), sorted by id.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], index: Any, table: gpd.GeoDataFrame) -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self.table = table

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def code_spec(self) -> CodeSpec:
        return CodeSpec.from_dict(self.manifest["codes"])

    @property
    def params(self) -> fi.IndexParams:
        return fi.IndexParams.from_dict(self.manifest["index"])

    @property
    def chips(self) -> ChipSettings:
        return ChipSettings(**self.manifest["chips"])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    def codes(self) -> NDArray[np.uint8]:
        """(count, bytes) packed codes, in sidecar (id) order."""
        nbytes = self.code_spec.nbytes
        if not len(self.table):
            return np.zeros((0, nbytes), dtype=np.uint8)
        return np.frombuffer(b"".join(self.table["code"]), dtype=np.uint8).reshape(-1, nbytes)

    def positions(self, ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Sidecar rows of archive ``ids`` (which must exist)."""
        all_ids = self.table["id"].to_numpy()
        pos = np.searchsorted(all_ids, ids)
        pos = np.clip(pos, 0, max(len(all_ids) - 1, 0))
        bad = [int(i) for i, p in zip(ids, pos) if not len(all_ids) or all_ids[p] != i]
        if bad:
            raise DvisUsageError(
                f"{self.path}: no entry with id {bad[0]} (ids run 0..{self.manifest['next_id'] - 1})")
        return pos.astype(np.int64)

    @classmethod
    def open(cls, path: str | Path, *, checksums: bool = True) -> Archive:
        """Open and check an archive (see :func:`read_manifest` and the module doc).

        Raises:
            InputNotFoundError: no such path.
            ArchiveError: not an archive; a file missing, truncated, corrupt; index and sidecar
                that disagree.
        """
        root = Path(path)
        manifest = read_manifest(root)
        for key in ("index", "sidecar"):
            check_file(root, manifest, key, checksums=checksums)
        index = fi.read(root / manifest["index_file"])
        table = read_sidecar(root / manifest["sidecar_file"])
        problems = consistency_problems(manifest, index, table)
        if problems:
            raise ArchiveError(root, f"index and sidecar disagree: {problems[0]}")
        return cls(root, manifest, index, table)


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the archive at ``root``, after checking that it is one."""
    if not root.exists():
        raise InputNotFoundError(root, "archive")
    if not root.is_dir():
        raise ArchiveError(root, "not a dvis archive (a file; an archive is a folder with manifest.json)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArchiveError(root, "not a dvis archive (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(mpath, f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(root, f"not a dvis archive (manifest.json has no format '{FORMAT}')")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ArchiveError(root, f"archive format {manifest['format_version']} is newer than this dvis "
                                 f"understands ({FORMAT_VERSION}); upgrade dynamicvis-cli")
    missing = [k for k in ("version", "count", "next_id", "codes", "index", "model", "chips",
                           "index_file", "sidecar_file") if k not in manifest]
    if missing:
        raise ArchiveError(mpath, f"incomplete manifest (no {', '.join(missing)})")
    return manifest


def check_file(root: Path, manifest: dict[str, Any], key: str, *, checksums: bool = True) -> None:
    """The manifest's ``key`` file exists with the recorded size (and SHA-256)."""
    path = root / manifest[f"{key}_file"]
    if not path.is_file():
        raise ArchiveError(
            path, f"missing (the manifest names it as the {key} of version {manifest['version']})")
    size = path.stat().st_size
    if size != manifest[f"{key}_bytes"]:
        raise ArchiveError(
            path, f"truncated or changed: {size} bytes, the manifest records {manifest[f'{key}_bytes']}")
    if checksums and sha256(path) != manifest[f"{key}_sha256"]:
        raise ArchiveError(path, "corrupt: its SHA-256 differs from the one in the manifest")


def read_sidecar(path: Path) -> gpd.GeoDataFrame:
    """The sidecar GeoParquet, checked for its columns."""
    try:
        table = gpd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise ArchiveError(path, f"not a readable GeoParquet sidecar ({type(exc).__name__})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ArchiveError(path, f"sidecar lacks column(s) {', '.join(missing)}")
    return table


def consistency_problems(manifest: dict[str, Any], index: Any, table: gpd.GeoDataFrame) -> list[str]:
    """What makes the index, the sidecar and the manifest disagree (empty when they agree)."""
    problems = []
    bits = int(manifest["codes"]["bits"])
    if index.d != bits:
        problems.append(f"index codes have {index.d} bits, the manifest says {bits}")
    n_idx, n_tab, n_man = int(index.ntotal), len(table), int(manifest["count"])
    if not n_idx == n_tab == n_man:
        problems.append(f"{n_idx} codes in the index, {n_tab} rows in the sidecar, {n_man} in the manifest")
        return problems
    tab_ids = table["id"].to_numpy(dtype=np.int64)
    if np.any(np.diff(tab_ids) <= 0):
        problems.append("sidecar ids are not unique and increasing")
    elif not np.array_equal(np.sort(fi.ids_of(index)), tab_ids):
        problems.append("the index and the sidecar hold different ids")
    elif n_tab and int(tab_ids[-1]) >= int(manifest["next_id"]):
        problems.append(f"id {int(tab_ids[-1])} is not below next_id {manifest['next_id']}")
    if fi.kind_of(index) != manifest["index"]["kind"]:
        problems.append(f"index is {fi.kind_of(index)}, the manifest says {manifest['index']['kind']}")
    return problems
