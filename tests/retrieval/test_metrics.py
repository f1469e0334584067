"""mAP@k, precision@k and rankings against float64 loops written out in the test."""

from __future__ import annotations

import numpy as np
import pytest

from dynamicvis_cli.retrieval.metrics import (
    average_precision_at_k,
    chance_precision,
    map_at_k,
    multi_hot,
    precision_at_k,
    rank_cosine,
    rank_hamming,
    relevance,
)


def ap_loop(rel: list[int]) -> float:
    hits, total = 0, 0.0
    for i, r in enumerate(rel, start=1):
        if r:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def test_average_precision_at_k_matches_the_loop() -> None:
    rng = np.random.default_rng(0)
    rel = rng.random((50, 20)) < 0.3
    rel[0] = False  # a query without a relevant hit scores 0
    expected = [ap_loop(list(r)) for r in rel]
    np.testing.assert_allclose(average_precision_at_k(rel), expected)
    assert map_at_k(rel) == pytest.approx(np.mean(expected))
    assert precision_at_k(rel) == pytest.approx(rel.mean())
    assert ap_loop([1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)


def test_relevance_is_sharing_a_label_single_and_multi() -> None:
    gallery, classes = multi_hot([["a"], ["b"], ["a", "c"], ["c"]])
    queries, _ = multi_hot([["a"], ["b", "c"]], classes)
    ranking = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    expected = [[True, False, True, False], [True, True, True, False]]
    assert relevance(queries, gallery, ranking).tolist() == expected
    # chance: query a shares with 2 of 4, query {b,c} with 3 of 4
    assert chance_precision(queries, gallery) == pytest.approx((2 / 4 + 3 / 4) / 2)


def test_rankings_break_ties_by_gallery_position() -> None:
    gallery = np.array([[0b1111], [0b0000], [0b0001], [0b0000], [0b0011]], dtype=np.uint8)
    query = np.array([[0b0000]], dtype=np.uint8)
    assert rank_hamming(query, gallery, 3).tolist() == [[1, 3, 2]]
    assert rank_hamming(query, gallery, 5).tolist() == [[1, 3, 2, 4, 0]]
    loo = rank_hamming(gallery, gallery, 2, exclude_self=True)
    assert all(i not in row for i, row in enumerate(loo.tolist()))
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [2.0, 0.0]])
    assert rank_cosine(emb[:1], emb, 2).tolist() == [[0, 3]]
    assert rank_cosine(emb[:1], emb, 2, exclude_self=True).tolist() == [[3, 1]]
