"""Choose the released embedder: candidates scored on a selection split, the choice reported on a
split no candidate and no choice ever saw.

Land-cover chips (``make_landcover_chips.py --split "Tile 8=select"``): gallery = chips of
Tiles 1-4, 7 (``train``); selection queries = Tile 8 (``select``); test queries = Tile 6
(``val``). A hit is relevant when it has the query's majority class (single-label) or shares a
class with it (multi-label). The candidate with the best single-label mAP@k of **binary** codes
(what ``dvis index`` stores) on ``select`` wins; ``val`` is then reported for every candidate, the
choice does not look at it.

Usage::

    python benchmarks/make_landcover_chips.py --out /tmp/chips128sel --split "Tile 8=select"
    python benchmarks/select_embedder.py /tmp/chips128sel \\
        --candidate tiny-random=tiny --candidate tiny-pretrained=/tmp/emb/pre-all ...
        --out benchmarks/results/embedder-selection.json

A candidate ``NAME=MODEL`` is an architecture name (random weights, seed 0) or a checkpoint
(backbone or task checkpoint: its trunk is used).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamicvis_cli.retrieval.embed import embed_images, load_embedder
from dynamicvis_cli.retrieval.evaluate import load_labelled, score_embeddings

sys.path.insert(0, str(Path(__file__).parent))
from pretrain_experiment import cpu_name


def score_candidate(model: str, chips: Path, *, k: int, bits: list[int]) -> dict[str, Any]:
    """Embed every chip once; the scores of each protocol on the select and val queries."""
    embedder = load_embedder(model, device="cpu", random_weights=True, seed=0)
    sets = {(proto, split): load_labelled(src, split=split)
            for proto, src in (("single-label", chips), ("multi-label", chips / "labels.csv"))
            for split in ("train", "select", "val")}
    paths = sorted({p.resolve() for s in sets.values() for p in s.paths})
    t0 = time.perf_counter()
    emb = dict(zip(paths, embed_images(embedder, paths, batch_size=32)))
    seconds = time.perf_counter() - t0

    def stack(images: list[Path]) -> np.ndarray:
        return np.stack([emb[p.resolve()] for p in images])

    row: dict[str, Any] = {"model": model, "weights": embedder.weights, "dim": embedder.dim,
                           "embed_seconds": round(seconds, 1), "chips": len(paths)}
    for proto in ("single-label", "multi-label"):
        gallery = sets[(proto, "train")]
        for split in ("select", "val"):
            queries = sets[(proto, split)]
            report = score_embeddings(stack(gallery.paths), gallery.labels, stack(queries.paths),
                                      queries.labels, k=k, hash_bits=[b for b in bits if b <= embedder.dim])
            row[f"{split}/{proto}"] = {
                "gallery": len(gallery.paths), "queries": len(queries.paths),
                "chance_precision": report["chance_precision"],
                **{r["representation"]: round(r["map"], 4) for r in report["results"]}}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chips", type=Path, help="make_landcover_chips.py output with a 'select' split")
    ap.add_argument("--candidate", action="append", required=True, metavar="NAME=MODEL")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--bits", default="64")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("DVIS_THREADS", "2")))
    if not (args.chips / "select").is_dir():
        print(f"error: {args.chips}: no 'select' split (make_landcover_chips.py --split 'Tile 8=select')",
              file=sys.stderr)
        return 2
    bits = [int(b) for b in args.bits.split(",")]
    rows: dict[str, Any] = {}
    for item in args.candidate:
        name, _, model = item.partition("=")
        rows[name] = score_candidate(model or name, args.chips, k=args.k, bits=bits)
        print(json.dumps({name: rows[name]}), flush=True)
    chosen = max(rows, key=lambda n: rows[n]["select/single-label"]["binary"])
    result = {"data": f"Dubai land-cover chips {args.chips.name}: gallery train (Tiles 1-4, 7), "
                      "select = Tile 8 (choice), val = Tile 6 (report)",
              "criterion": f"select/single-label binary mAP@{args.k}", "chosen": chosen,
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "candidates": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print("| candidate | dim | select binary | select float | val binary | val float | val multi binary |")
    for name, r in rows.items():
        s, v, vm = r["select/single-label"], r["val/single-label"], r["val/multi-label"]
        mark = " (chosen)" if name == chosen else ""
        print(f"| {name}{mark} | {r['dim']} | {s['binary']:.3f} | {s['float']:.3f} | {v['binary']:.3f} | "
              f"{v['float']:.3f} | {vm['binary']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
