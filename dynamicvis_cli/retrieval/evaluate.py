"""Retrieval evaluation: labelled images → mAP@k and precision@k for float, binary and hashed codes.

Labelled image sets:

- a folder of class folders (ImageFolder: ``DATA/<class>/<image>``): one label per image;
- a CSV with columns ``path,labels`` (labels separated by ``;``, paths relative to the CSV's
  folder): one or several labels per image. An optional ``split`` column with ``--split`` picks rows.

Queries and gallery: with a separate query set (the paper's protocol: e.g. validation images
against training images), every query ranks the whole gallery; without one, each gallery image
is a query against all the others (leave-one-out).

Representations compared, all from the same embeddings (the mean of the last stage):
``float`` (cosine similarity), ``binary`` (sign codes, one bit per dimension, Hamming) and
``hash-N`` (trivial hashing to N bits, Hamming), see :mod:`dynamicvis_cli.retrieval.codes`.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynamicvis_cli.errors import DvisUsageError, InputNotFoundError
from dynamicvis_cli.retrieval.chips import RASTER_EXTENSIONS
from dynamicvis_cli.retrieval.codes import binarise, code_spec, encode
from dynamicvis_cli.retrieval.embed import Embedder, ProgressFn, embed_images
from dynamicvis_cli.retrieval.metrics import (
    chance_precision,
    map_at_k,
    multi_hot,
    precision_at_k,
    rank_cosine,
    rank_hamming,
    relevance,
)


@dataclass
class LabelledImages:
    """Images with their label sets."""

    source: Path
    paths: list[Path]
    labels: list[list[str]]

    @property
    def multi_label(self) -> bool:
        return any(len(x) > 1 for x in self.labels)


def load_labelled(path: str | Path, *, split: str | None = None) -> LabelledImages:
    """An ImageFolder folder or a ``path,labels[,split]`` CSV (see the module doc).

    Raises:
        InputNotFoundError: the folder, CSV or an image listed in it is missing.
        DvisUsageError: no images, missing columns, images without labels.
    """
    root = Path(path)
    if not root.exists():
        raise InputNotFoundError(root, "labelled image set")
    paths: list[Path] = []
    labels: list[list[str]] = []
    if root.is_dir():
        if split is not None:
            root = root / split
            if not root.is_dir():
                raise InputNotFoundError(root, f"split '{split}' folder")
        for cls_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for img in sorted(cls_dir.iterdir()):
                if img.is_file() and img.suffix.lower() in RASTER_EXTENSIONS:
                    paths.append(img)
                    labels.append([cls_dir.name])
    else:
        with root.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if not {"path", "labels"} <= cols:
                raise DvisUsageError(
                    f"{root}: a labelled-images CSV needs the columns path,labels (has {sorted(cols)})")
            if split is not None and "split" not in cols:
                raise DvisUsageError(f"{root}: --split given but the CSV has no split column")
            for row in reader:
                if split is not None and row["split"] != split:
                    continue
                img = Path(row["path"])
                img = img if img.is_absolute() else root.parent / img
                if not img.is_file():
                    raise InputNotFoundError(img, f"image listed in {root}")
                names = [x.strip() for x in (row["labels"] or "").split(";") if x.strip()]
                if not names:
                    raise DvisUsageError(f"{root}: {row['path']} has no label")
                paths.append(img)
                labels.append(names)
    if not paths:
        where = f" (split {split})" if split else ""
        raise DvisUsageError(f"{root}{where}: no labelled images found (class folders of images, or a CSV)")
    return LabelledImages(Path(path), paths, labels)


def score_embeddings(
    gallery_emb: np.ndarray,
    gallery_labels: Sequence[Sequence[str]],
    query_emb: np.ndarray | None = None,
    query_labels: Sequence[Sequence[str]] | None = None,
    *,
    k: int = 20,
    hash_bits: Sequence[int] = (64,),
) -> dict[str, Any]:
    """mAP@k and precision@k of float embeddings (cosine), sign codes and trivial hashes
    (Hamming), from embeddings already computed. Without queries: leave-one-out over the gallery.

    Returns:
        ``{"k", "multi_label", "classes", "chance_precision", "results": [{"representation",
        "bits", "distance", "map", "precision"}]}``.
    """
    leave_one_out = query_emb is None
    n_gallery = len(gallery_emb) - (1 if leave_one_out else 0)
    if k < 1:
        raise DvisUsageError(f"-k {k}: must be at least 1")
    if k > n_gallery:
        raise DvisUsageError(f"-k {k}: the gallery has only {n_gallery} image(s) to retrieve")
    dim = gallery_emb.shape[1]
    specs = [code_spec("hash", dim, b) for b in hash_bits]
    # Ties are ranked by gallery position: shuffle the gallery once (seed 0), so that they are not
    # broken by a file order that is sorted by class (ImageFolder) and would favour one class.
    order = np.random.default_rng(0).permutation(len(gallery_emb))
    gallery_emb = np.asarray(gallery_emb)[order]
    gallery_labels = [gallery_labels[i] for i in order]
    if query_emb is None:
        q_emb, q_labels = gallery_emb, gallery_labels
    else:
        q_emb, q_labels = query_emb, list(query_labels or [])
    classes = sorted({c for item in list(gallery_labels) + list(q_labels) for c in item})
    g_lab, _ = multi_hot(gallery_labels, classes)
    q_lab, _ = multi_hot(q_labels, classes)

    def scores(ranking: np.ndarray) -> dict[str, float]:
        rel = relevance(q_lab, g_lab, ranking)
        return {"map": round(map_at_k(rel), 4), "precision": round(precision_at_k(rel), 4)}

    results = [{"representation": "float", "bits": 32 * dim, "distance": "cosine",
                **scores(rank_cosine(q_emb, gallery_emb, k, exclude_self=leave_one_out))}]
    results.append({"representation": "binary", "bits": dim, "distance": "hamming",
                    **scores(rank_hamming(binarise(q_emb), binarise(gallery_emb), k,
                                          exclude_self=leave_one_out))})
    for spec in specs:
        results.append({"representation": f"hash-{spec.bits}", "bits": spec.bits, "distance": "hamming",
                        **scores(rank_hamming(encode(q_emb, spec), encode(gallery_emb, spec), k,
                                              exclude_self=leave_one_out))})
    chance = chance_precision(q_lab, g_lab)
    if leave_one_out:  # a query never retrieves itself: remove it from its own share
        n = len(gallery_emb)
        chance = (chance * n - 1) / (n - 1) if n > 1 else 0.0
    return {"k": k, "multi_label": any(len(x) > 1 for x in list(gallery_labels) + list(q_labels)),
            "classes": classes, "chance_precision": round(chance, 4), "results": results}


def evaluate_retrieval(
    embedder: Embedder,
    gallery: LabelledImages,
    queries: LabelledImages | None = None,
    *,
    k: int = 20,
    hash_bits: Sequence[int] = (64,),
    batch_size: int = 16,
    bands: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Embed the gallery (and queries) with ``embedder``, then :func:`score_embeddings`.

    Returns:
        :func:`score_embeddings`'s report plus ``gallery``, ``queries``, ``protocol`` and
        ``seconds``.
    """
    n_gallery = len(gallery.paths) - (1 if queries is None else 0)
    if not 1 <= k <= n_gallery:  # checked before the slow part
        raise DvisUsageError(f"-k {k}: must be between 1 and the gallery's {n_gallery} image(s) to retrieve")
    for b in hash_bits:
        code_spec("hash", embedder.dim, b)
    start = time.perf_counter()
    total = len(gallery.paths) + (0 if queries is None else len(queries.paths))

    def tick(offset: int) -> ProgressFn | None:
        return None if progress is None else (lambda done, _n: progress(offset + done, total))

    g_emb = embed_images(embedder, gallery.paths, bands=bands, batch_size=batch_size, progress=tick(0))
    q_emb = None if queries is None else embed_images(
        embedder, queries.paths, bands=bands, batch_size=batch_size, progress=tick(len(gallery.paths)))
    embed_seconds = time.perf_counter() - start
    report = score_embeddings(g_emb, gallery.labels, q_emb, None if queries is None else queries.labels,
                              k=k, hash_bits=hash_bits)
    return {
        "gallery": {"source": str(gallery.source), "images": len(gallery.paths)},
        "queries": ({"source": str(queries.source), "images": len(queries.paths)} if queries is not None
                    else "leave-one-out over the gallery"),
        "protocol": "relevant = shares a label with the query; mAP@k as HashNet/DSH (AP over the top k, "
                    "normalised by relevant hits retrieved); ties ranked in a fixed random order of the "
                    "gallery (seed 0)",
        **report,
        "seconds": {"embed": round(embed_seconds, 2), "total": round(time.perf_counter() - start, 2)},
    }
