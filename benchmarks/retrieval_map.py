"""mAP@20 and precision@20 of float embeddings, sign codes and trivial hashes on land-cover chips.

The protocol of ``dvis evaluate --task retrieval``: validation chips (Dubai Tile 6) are the
queries, training chips (Tiles 1-4, 7, 8) the gallery; a hit is relevant when it shares a label
with the query, single-label (majority class) and multi-label (every class covering >= 10 % of a
chip). Build the chips first with ``benchmarks/make_landcover_chips.py --out CHIPS``.

Usage::

    python benchmarks/retrieval_map.py CHIPS [--models tiny,small]
        [--out benchmarks/results/retrieval-map.json]

No trained DynamicVis weights are available to this project, so the models run with random
weights (seed 0): the numbers are a floor for the pipeline, not a result of the model.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dynamicvis_cli.retrieval.embed import embed_images, load_embedder
from dynamicvis_cli.retrieval.evaluate import load_labelled, score_embeddings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chips", type=Path, help="folder written by make_landcover_chips.py")
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--bits", default="32,64")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "retrieval-map.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    bits = [int(b) for b in args.bits.split(",")]
    single_g, single_q = load_labelled(args.chips / "train"), load_labelled(args.chips / "val")
    multi_g = load_labelled(args.chips / "labels.csv", split="train")
    multi_q = load_labelled(args.chips / "labels.csv", split="val")
    runs = []
    for model in args.models.split(","):
        embedder = load_embedder(model, device="cpu", random_weights=True, seed=0)
        t0 = time.perf_counter()
        # every chip once: the single- and multi-label sets are the same images
        paths = sorted({p.resolve() for p in single_g.paths + single_q.paths})
        emb = dict(zip(paths, embed_images(embedder, paths, batch_size=32)))
        seconds = time.perf_counter() - t0

        def stack(images: list[Path]) -> np.ndarray:
            return np.stack([emb[p.resolve()] for p in images])

        for protocol, gallery, queries in (("single-label", single_g, single_q),
                                           ("multi-label", multi_g, multi_q)):
            usable = [b for b in bits if b <= embedder.dim]
            report = score_embeddings(stack(gallery.paths), gallery.labels, stack(queries.paths),
                                      queries.labels, k=args.k, hash_bits=usable)
            runs.append({"model": model, "weights": embedder.weights, "seed": 0, "protocol": protocol,
                         "dim": embedder.dim, "gallery": len(gallery.paths), "queries": len(queries.paths),
                         **report, "embed_seconds": round(seconds, 1),
                         "chips_per_second": round(len(paths) / seconds, 1)})
            print(json.dumps({k: runs[-1][k] for k in ("model", "protocol", "chance_precision", "results")}),
                  flush=True)
    result = {
        "data": "Dubai land-cover chips (make_landcover_chips.py defaults: 128 px, stride 128); "
                "gallery = train tiles, queries = val tile",
        "weights": "random (seed 0): a floor, not a result",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print("| model (random weights) | labels | chance P@20 | float mAP / P | binary mAP / P | "
          + " | ".join(f"hash-{b} mAP / P" for b in bits) + " |")
    for r in runs:
        cells = {x["representation"]: f"{x['map']:.3f} / {x['precision']:.3f}" for x in r["results"]}
        print(f"| {r['model']} ({r['dim']}-d) | {r['protocol']} | {r['chance_precision']:.3f} | "
              f"{cells['float']} | "
              f"{cells['binary']} | " + " | ".join(cells.get(f"hash-{b}", "—") for b in bits) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
