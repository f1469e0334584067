"""Retrieval evaluation on real labelled chips (Dubai tiles, labelled by their masks)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.retrieval.evaluate import evaluate_retrieval, load_labelled, score_embeddings


def test_evaluate_retrieval_reports_float_binary_and_hash(embedder: Any, dubai_chips: Path) -> None:
    gallery = load_labelled(dubai_chips)
    assert len(gallery.paths) == 16 and not gallery.multi_label
    report = evaluate_retrieval(embedder, gallery, k=5, hash_bits=[16, 32])
    assert report["queries"] == "leave-one-out over the gallery" and report["k"] == 5
    assert [r["representation"] for r in report["results"]] == ["float", "binary", "hash-16", "hash-32"]
    assert [r["bits"] for r in report["results"]] == [32 * 64, 64, 16, 32]
    for r in report["results"]:
        assert 0.0 <= r["map"] <= 1.0 and 0.0 <= r["precision"] <= 1.0
    assert 0.0 < report["chance_precision"] <= 1.0
    with pytest.raises(DvisUsageError, match="gallery"):
        evaluate_retrieval(embedder, gallery, k=16)
    with pytest.raises(DvisUsageError, match="bits"):
        evaluate_retrieval(embedder, gallery, k=5, hash_bits=[12])


def test_multi_label_csv_with_splits(dubai_chips: Path, tmp_path: Path) -> None:
    images = sorted(dubai_chips.rglob("*.png"))
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels", "split"])
        for i, p in enumerate(images):
            labels = f"{p.parent.name};extra" if i % 3 == 0 else p.parent.name
            w.writerow([p, labels, "val" if i < 4 else "train"])
    train, val = load_labelled(table, split="train"), load_labelled(table, split="val")
    assert (len(train.paths), len(val.paths)) == (12, 4) and train.multi_label
    # embeddings that separate the labels perfectly: every hit of the top k is relevant
    g_labels = [["a"], ["b"], ["a", "c"], ["b"], ["c"]]
    g_emb = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 0], [0, 0, 1]], np.float32)
    g_emb = np.pad(g_emb, ((0, 0), (0, 5)))
    q_emb = np.pad(np.array([[1, 0, 0], [0, 1, 0]], np.float32), ((0, 0), (0, 5)))
    g_emb, q_emb = g_emb - 0.1, q_emb - 0.1  # 8 dims (sign codes need a multiple of 8)
    report = score_embeddings(g_emb, g_labels, q_emb, [["a"], ["b"]], k=2, hash_bits=[])
    assert report["multi_label"] and [r["map"] for r in report["results"]] == [1.0, 1.0]
    assert report["chance_precision"] == pytest.approx(0.4)
    with pytest.raises(DvisUsageError, match="columns"):
        (tmp_path / "bad.csv").write_text("file,class\n")
        load_labelled(tmp_path / "bad.csv")
