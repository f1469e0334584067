"""Retrieval metrics: rankings by Hamming or cosine, mAP@k and precision@k.

Relevance follows the DynamicVis paper's protocol: a retrieved item is relevant to a query when
the two share at least one label, so single-label sets (one label each) and multi-label sets use
the same code. Labels are given as a multi-hot matrix (items × classes, bool).

mAP@k is the hashing literature's (as in HashNet's and DSH's ``CalcTopMap``): for one query with
relevance ``rel_1..rel_k`` of its top k,

    AP@k = (Σ_i P@i · rel_i) / (Σ_i rel_i),   P@i = (Σ_{j≤i} rel_j) / i,

and 0 when none of the top k is relevant; mAP@k is the mean over queries. precision@k is the
mean over queries of (Σ_i rel_i) / k.

Ties: items at equal distance are ranked by their position in the gallery (a stable sort), so
results are deterministic; short codes have many ties, which this choice does not hide.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.retrieval.codes import hamming


def _top_k(scores: NDArray[np.float64] | NDArray[np.int64], k: int) -> NDArray[np.int64]:
    """Indices of the k smallest scores per row, ascending, ties by position."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(scores, k - 1, axis=1)[:, :k]
        # argpartition does not keep ties in position order: take every item that ties with the
        # k-th score, then sort stably by (score, position) and cut at k.
        kth = np.take_along_axis(scores, part, axis=1).max(axis=1, keepdims=True)
        out = np.empty((scores.shape[0], k), dtype=np.int64)
        for i in range(scores.shape[0]):
            cand = np.flatnonzero(scores[i] <= kth[i])
            order = np.lexsort((cand, scores[i, cand]))
            out[i] = cand[order[:k]]
        return out
    return np.argsort(scores, axis=1, kind="stable")[:, :k].astype(np.int64)


def rank_hamming(query_codes: ArrayLike, gallery_codes: ArrayLike, k: int,
                 exclude_self: bool = False) -> NDArray[np.int64]:
    """(Q, k) gallery indices by ascending Hamming distance (ties by position).

    Args:
        exclude_self: queries are the gallery itself (leave-one-out): item i never retrieves i.
    """
    dist = hamming(query_codes, gallery_codes)
    if exclude_self:
        dist = dist.copy()
        np.fill_diagonal(dist, np.iinfo(np.int64).max)
    return _top_k(dist, k)


def rank_cosine(query_emb: ArrayLike, gallery_emb: ArrayLike, k: int,
                exclude_self: bool = False) -> NDArray[np.int64]:
    """(Q, k) gallery indices by descending cosine similarity of float embeddings."""
    q = np.asarray(query_emb, dtype=np.float64)
    g = np.asarray(gallery_emb, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    dist = -(q @ g.T)
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    return _top_k(dist, k)


def multi_hot(labels: Sequence[Sequence[str]], classes: Sequence[str] | None = None
              ) -> tuple[NDArray[np.bool_], list[str]]:
    """Label lists → (items × classes) bool matrix and the class order (sorted if not given)."""
    names = list(classes) if classes is not None else sorted({c for item in labels for c in item})
    pos = {c: i for i, c in enumerate(names)}
    out = np.zeros((len(labels), len(names)), dtype=np.bool_)
    for i, item in enumerate(labels):
        for c in item:
            if c not in pos:
                raise DvisUsageError(f"label '{c}' is not one of the classes {names}")
            out[i, pos[c]] = True
    return out, names


def relevance(query_labels: NDArray[np.bool_], gallery_labels: NDArray[np.bool_],
              ranking: NDArray[np.int64]) -> NDArray[np.bool_]:
    """(Q, k) bool: the ranked gallery item shares a label with its query."""
    q = np.asarray(query_labels, dtype=np.bool_)
    g = np.asarray(gallery_labels, dtype=np.bool_)
    if q.shape[1] != g.shape[1]:
        raise DvisUsageError(f"query and gallery labels have {q.shape[1]} and {g.shape[1]} classes")
    return np.asarray((g[ranking] & q[:, None, :]).any(axis=-1), dtype=np.bool_)


def average_precision_at_k(rel: ArrayLike) -> NDArray[np.float64]:
    """AP@k per query from its (Q, k) relevance (see the module doc); 0 without a relevant hit."""
    r = np.asarray(rel, dtype=np.float64)
    if r.ndim != 2:
        raise DvisUsageError(f"relevance must be (queries, k), got shape {r.shape}")
    hits = np.cumsum(r, axis=1)
    prec = hits / np.arange(1, r.shape[1] + 1)
    total = r.sum(axis=1)
    ap: NDArray[np.float64] = np.divide((prec * r).sum(axis=1), total, out=np.zeros(r.shape[0]),
                                        where=total > 0)
    return ap


def map_at_k(rel: ArrayLike) -> float:
    """mAP@k: mean AP@k over queries."""
    ap = average_precision_at_k(rel)
    return float(ap.mean()) if ap.size else 0.0


def precision_at_k(rel: ArrayLike) -> float:
    """precision@k: mean share of relevant items in each query's top k."""
    r = np.asarray(rel, dtype=np.float64)
    return float(r.mean()) if r.size else 0.0


def chance_precision(query_labels: NDArray[np.bool_], gallery_labels: NDArray[np.bool_]) -> float:
    """Expected precision of a random ranking: mean over queries of the gallery's relevant share.

    The floor any representation has to beat; with unbalanced classes it is far above 1/classes.
    """
    q = np.asarray(query_labels, dtype=np.float64)
    g = np.asarray(gallery_labels, dtype=np.bool_)
    shares = [float((g & qi.astype(bool)).any(axis=1).mean()) for qi in q]
    return float(np.mean(shares)) if shares else 0.0
