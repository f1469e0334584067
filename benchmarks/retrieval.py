"""Binary-index benchmark: build time, memory, query latency and recall@k of exact, HNSW and IVF.

An archive's index (``dynamicvis_cli.retrieval.faiss_index``: an IndexBinaryIDMap2 around a flat,
HNSW or IVF index) is built over N synthetic codes and queried one query at a time (one thread,
as ``dvis search`` runs a few queries), k = 20.

Synthetic codes, so that a million can be made in seconds: embeddings with low intrinsic dimension
like real ones — a mixture of 1,000 Gaussian clusters in a 32-d latent space, mapped to BITS
dimensions by a random linear map, plus isotropic noise — signed into BITS-bit codes. Queries are
fresh samples of the same mixture (not in the archive). Uniformly random codes would be the wrong
test: every pair is ~BITS/2 apart and no index can find neighbours that do not exist.

recall@k of an approximate kind: the share of its k hits whose distance is within the exact
k-th distance (tie-aware: Hamming distances tie a lot, and any item tied with the exact k-th is as
good an answer); the strict overlap of id sets is reported too.

Usage::

    python benchmarks/retrieval.py [--n 1000000] [--bits 768] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dynamicvis_cli.retrieval import faiss_index as fi


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_codes(n: int, bits: int, seed: int, *, latent: int = 32, clusters: int = 1000,
                    chunk: int = 50_000) -> np.ndarray:
    """(n, bits/8) packed codes of the mixture described in the module doc (fixed map, seed 0)."""
    base = np.random.default_rng(0)
    w = base.standard_normal((latent, bits)).astype(np.float32)
    centres = base.standard_normal((clusters, latent)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, bits // 8), dtype=np.uint8)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        z = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, latent)).astype(np.float32)
        x = z @ w + 2.0 * rng.standard_normal((m, bits)).astype(np.float32)
        out[s:s + m] = np.packbits(x > 0, axis=1)
    return out


def latency(index: Any, queries: np.ndarray, k: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """One query at a time through fi.search (one thread below 64 queries): ms stats, D, I."""
    times, dist, ids = [], [], []
    for i in range(len(queries)):
        t = time.perf_counter()
        d, j = fi.search(index, queries[i:i + 1], k)
        times.append((time.perf_counter() - t) * 1e3)
        dist.append(d[0])
        ids.append(j[0])
    ms = np.array(times)
    return ({"median_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
             "mean_ms": round(float(ms.mean()), 3)}, np.array(dist), np.array(ids))


def recall(dist: np.ndarray, ids: np.ndarray, exact_d: np.ndarray, exact_i: np.ndarray,
           k: int) -> dict[str, float]:
    tie_aware = np.mean([min(k, int(((d <= exact_d[q, k - 1]) & (i >= 0)).sum())) / k
                         for q, (d, i) in enumerate(zip(dist, ids))])
    strict = np.mean([len(set(i.tolist()) & set(e.tolist())) / k for i, e in zip(ids, exact_i)])
    return {"recall": round(float(tie_aware), 4), "recall_strict_ids": round(float(strict), 4)}


def index_bytes(index: Any) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.index"
        fi.write(index, path)
        return path.stat().st_size


def build(kind: str, codes: np.ndarray, bits: int, params: fi.IndexParams,
          train_sample: int) -> tuple[Any, dict[str, Any]]:
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    train = codes[np.random.default_rng(1).choice(len(codes), min(train_sample, len(codes)), replace=False)]
    index = fi.new_index(bits, params, train if kind == "ivf" else codes[:0])
    t1 = time.perf_counter()
    fi.add(index, codes, np.arange(len(codes), dtype=np.int64))
    t2 = time.perf_counter()
    info = {"kind": kind, **params.to_dict(), "train_s": round(t1 - t0, 2), "add_s": round(t2 - t1, 2),
            "build_s": round(t2 - t0, 2), "rss_growth_mb": round(rss_mb() - rss0, 1),
            "index_file_mb": round(index_bytes(index) / 2**20, 1)}
    print(json.dumps(info), flush=True)
    return index, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=768)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--ef", default="16,32,64,128")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", default="8,16,32,64")
    ap.add_argument("--short-bits", type=int, default=64,
                    help="also time exact search of short codes (0: skip)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "retrieval-cpu.json")
    args = ap.parse_args(argv)
    k = args.k
    t = time.perf_counter()
    codes = synthetic_codes(args.n, args.bits, seed=1)
    queries = synthetic_codes(args.queries, args.bits, seed=2)
    print(f"generated {args.n} codes in {time.perf_counter() - t:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []

    flat, info = build("flat", codes, args.bits, fi.IndexParams("flat"), 0)
    stats, exact_d, exact_i = latency(flat, queries, k)
    rows.append({**info, "bits": args.bits, **stats, "recall": 1.0})
    print(json.dumps(rows[-1]), flush=True)
    del flat

    hnsw, info = build("hnsw", codes, args.bits, fi.IndexParams("hnsw", hnsw_m=32, ef_construction=40), 0)
    for ef in (int(v) for v in args.ef.split(",")):
        fi.set_search_params(hnsw, k=k, ef_search=ef)
        stats, d, i = latency(hnsw, queries, k)
        rows.append({**info, "bits": args.bits, "ef_search": max(ef, k), **stats,
                     **recall(d, i, exact_d, exact_i, k)})
        print(json.dumps(rows[-1]), flush=True)
    del hnsw

    ivf, info = build("ivf", codes, args.bits, fi.IndexParams("ivf", nlist=args.nlist, nprobe=8),
                      fi.TRAIN_PER_LIST * args.nlist)
    for nprobe in (int(v) for v in args.nprobe.split(",")):
        fi.set_search_params(ivf, k=k, nprobe=nprobe)
        stats, d, i = latency(ivf, queries, k)
        rows.append({**info, "bits": args.bits, "nprobe": nprobe, **stats,
                     **recall(d, i, exact_d, exact_i, k)})
        print(json.dumps(rows[-1]), flush=True)
    del ivf

    if args.short_bits:  # the same mixture signed into short codes: exact search only
        short = synthetic_codes(args.n, args.short_bits, seed=1)
        flat, info = build("flat", short, args.short_bits, fi.IndexParams("flat"), 0)
        stats, _, _ = latency(flat, synthetic_codes(args.queries, args.short_bits, seed=2), k)
        rows.append({**info, "bits": args.short_bits, **stats})
        print(json.dumps(rows[-1]), flush=True)
        del flat, short

    result = {
        "n": args.n, "bits": args.bits, "k": k, "queries": args.queries,
        "data": "synthetic: 1000-cluster mixture in a 32-d latent space, random linear map, noise, sign",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores; faiss {faiss.__version__} "
                   f"({faiss.get_compile_options().strip()})",
        "python": platform.python_version(), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
