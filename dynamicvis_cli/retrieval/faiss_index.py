"""FAISS binary indexes: the three kinds an archive can use, with stable ids.

Every index is an ``IndexBinaryIDMap2`` around one of:

- ``flat`` (``IndexBinaryFlat``): exact; search cost grows linearly with the archive (about 7 ms
  per query for a million 768-bit codes on one core of this project's CPU; see docs/benchmarks.md).
- ``hnsw`` (``IndexBinaryHNSW``): a graph; sub-millisecond queries, approximate (``ef_search``
  trades speed for recall); adding is incremental.
- ``ivf`` (``IndexBinaryIVF``): ``nlist`` clusters learnt (k-means on at most 64 codes per
  cluster) from the codes of the build; a query scans ``nprobe`` of them. Later appends are
  assigned to the clusters learnt at build time.

The ID map keeps the archive's own ids (0, 1, 2, ... in insertion order, never reused), so ids
stay the same across appends whatever the kind.

Threads: FAISS parallelises over queries with OpenMP. For a few queries that only adds overhead
(measured: 7 ms with one thread vs 70-130 ms with two, for one query on a busy 2-core machine),
so :func:`search` uses one thread below :data:`PARALLEL_QUERIES` queries.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from dynamicvis_cli.errors import ArchiveError, DvisUsageError

KINDS = ("flat", "hnsw", "ivf")

#: Below this many queries, search runs on one thread (see the module doc).
PARALLEL_QUERIES = 64


@dataclass
class IndexParams:
    """How an index is built and searched; stored in the archive's manifest.

    Attributes:
        kind: ``flat``, ``hnsw`` or ``ivf``.
        hnsw_m: graph degree of HNSW.
        ef_construction: HNSW's candidate list while building.
        ef_search: HNSW's candidate list while searching (≥ k is used).
        nlist: IVF clusters (None: chosen from the first batch's size).
        nprobe: IVF clusters scanned per query (None: nlist / 64, at least 1).
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    nlist: int | None = None
    nprobe: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "hnsw":
            d.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search)
        if self.kind == "ivf":
            d.update(nlist=self.nlist, nprobe=self.nprobe)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexParams:
        known = {"kind", "hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe"}
        return cls(**{k: v for k, v in d.items() if k in known})


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise DvisUsageError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    return kind


#: IVF trains k-means on at most this many codes per cluster (a fixed random sample).
TRAIN_PER_LIST = 64


def default_nlist(count: int) -> int:
    """IVF clusters for ``count`` codes: √count, but at least 39 training codes per cluster
    (FAISS's k-means warns below that), at least 1."""
    return max(1, min(int(math.sqrt(count)), count // 39))


def new_index(bits: int, params: IndexParams, train_codes: NDArray[np.uint8]) -> Any:
    """An empty ID-mapped index of ``params.kind`` for ``bits``-bit codes (IVF is trained on
    ``train_codes``, which must not be empty; ``params.nlist``/``nprobe`` are filled in)."""
    check_kind(params.kind)
    if params.kind == "flat":
        inner: Any = faiss.IndexBinaryFlat(bits)
    elif params.kind == "hnsw":
        inner = faiss.IndexBinaryHNSW(bits, params.hnsw_m)
        inner.hnsw.efConstruction = params.ef_construction
        inner.hnsw.efSearch = params.ef_search
    else:
        if len(train_codes) == 0:
            raise DvisUsageError("an IVF index needs codes to train on; no chip was embedded")
        params.nlist = params.nlist or default_nlist(len(train_codes))
        if params.nlist > len(train_codes):
            raise DvisUsageError(f"--nlist {params.nlist}: more clusters than codes ({len(train_codes)})")
        params.nprobe = params.nprobe or max(1, params.nlist // 64)
        quantizer = faiss.IndexBinaryFlat(bits)
        inner = faiss.IndexBinaryIVF(quantizer, bits, params.nlist)
        if params.nlist == 1:  # one list needs no k-means; keep FAISS from warning about it
            inner.cp.min_points_per_centroid = 1
        inner.own_fields = True
        quantizer.this.disown()  # type: ignore[attr-defined]  # SWIG: the IVF owns it now
        limit = TRAIN_PER_LIST * params.nlist
        if len(train_codes) > limit:  # k-means cost grows with the sample; 64 per list is plenty
            pick = np.random.default_rng(0).choice(len(train_codes), limit, replace=False)
            train_codes = train_codes[np.sort(pick)]
        inner.train(np.ascontiguousarray(train_codes))
        inner.nprobe = params.nprobe
    index = faiss.IndexBinaryIDMap2(inner)
    index.own_fields = True
    inner.this.disown()
    return index


def add(index: Any, codes: NDArray[np.uint8], ids: NDArray[np.int64]) -> None:
    """Add packed ``codes`` under ``ids``."""
    if len(codes):
        index.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8),
                           np.ascontiguousarray(ids, dtype=np.int64))


def write(index: Any, path: Path) -> None:
    """Write ``index`` to ``path`` and flush it to disk (the caller renames it into place)."""
    faiss.write_index_binary(index, str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def read(path: Path) -> Any:
    """Read an index written by :func:`write`.

    Raises:
        ArchiveError: the file is not a FAISS binary index (corrupt, truncated, other format).
    """
    try:
        index = faiss.read_index_binary(str(path))
    except RuntimeError:
        raise ArchiveError(path, "corrupt or truncated FAISS index (FAISS cannot read it)") from None
    if not isinstance(index, faiss.IndexBinaryIDMap2):
        raise ArchiveError(path, f"not an ID-mapped binary index ({type(index).__name__})")
    return index


def kind_of(index: Any) -> str:
    """``flat``, ``hnsw`` or ``ivf`` for an index read from disk."""
    inner = faiss.downcast_IndexBinary(index.index)
    for kind, cls in (("flat", faiss.IndexBinaryFlat), ("hnsw", faiss.IndexBinaryHNSW),
                      ("ivf", faiss.IndexBinaryIVF)):
        if isinstance(inner, cls):
            return kind
    return type(inner).__name__


def ids_of(index: Any) -> NDArray[np.int64]:
    """The archive ids held by ``index``, in its internal order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def codes_of(index: Any) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
    """(ids, codes) of every entry, read from the index's own storage (for verification)."""
    inner = faiss.downcast_IndexBinary(index.index)
    nbytes = index.code_size
    if isinstance(inner, faiss.IndexBinaryIVF):
        ids_parts, code_parts = [], []
        inv = inner.invlists
        for lst in range(inner.nlist):
            n = inv.list_size(lst)
            if n == 0:
                continue
            ids_parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).copy())
            code_parts.append(faiss.rev_swig_ptr(inv.get_codes(lst), n * nbytes).copy().reshape(n, nbytes))
        if not ids_parts:
            return np.zeros(0, np.int64), np.zeros((0, nbytes), np.uint8)
        # IVF list ids are internal positions; map them through the ID map.
        positions = np.concatenate(ids_parts).astype(np.int64)
        return ids_of(index)[positions], np.concatenate(code_parts)
    storage: Any = faiss.downcast_IndexBinary(inner.storage if isinstance(inner, faiss.IndexBinaryHNSW)
                                              else inner)
    codes = faiss.vector_to_array(storage.xb).reshape(-1, nbytes)
    return ids_of(index), codes


def set_search_params(index: Any, *, k: int, ef_search: int | None = None, nprobe: int | None = None) -> None:
    """Apply HNSW ``ef_search`` (at least ``k``) or IVF ``nprobe`` to ``index`` before searching."""
    inner = faiss.downcast_IndexBinary(index.index)
    if isinstance(inner, faiss.IndexBinaryHNSW) and ef_search is not None:
        inner.hnsw.efSearch = max(int(ef_search), k)
    if isinstance(inner, faiss.IndexBinaryIVF) and nprobe is not None:
        inner.nprobe = max(1, min(int(nprobe), inner.nlist))


def search(index: Any, queries: NDArray[np.uint8], k: int) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """(distances, ids), each (Q, k); id -1 (distance large) where fewer than k were found."""
    q = np.ascontiguousarray(queries, dtype=np.uint8)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if len(q) < PARALLEL_QUERIES else max(1, os.cpu_count() or 1))
    try:
        dist, ids = index.search(q, k)
    finally:
        faiss.omp_set_num_threads(before)
    return dist, ids


def exact_subset_search(codes: NDArray[np.uint8], ids: NDArray[np.int64], queries: NDArray[np.uint8],
                        k: int) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """Exact search among the given (ids, codes) only, e.g. the entries inside a region."""
    if len(codes) == 0:
        return np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64)
    flat = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    flat.add(np.ascontiguousarray(codes, dtype=np.uint8))
    dist, pos = search(flat, queries, min(k, len(codes)))
    return dist, np.where(pos >= 0, ids[np.clip(pos, 0, None)], -1)
