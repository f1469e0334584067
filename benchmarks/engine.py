"""End-to-end scene throughput and peak memory of ``dvis segment`` against scene size.

    python benchmarks/engine.py --sizes 2000 20000 [--layout tiled|striped] [--model tiny]
        [--workers 1] [--memory-limit 4G] [--out benchmarks/results/engine-cpu.json]

A thin wrapper over :mod:`dynamicvis_cli.bench` (what ``dvis bench`` runs): each scene is a
generated 3-band uint8 GeoTIFF (UTM, DEFLATE, a nodata border), ``dvis segment`` runs on it as a
child process (read → model → stitch → COG write), and the report gives wall time, megapixels
per second, stage times and the peak RSS of the dvis process. The model is the tiny
architecture with random weights: this measures the engine, not the backbone (see
benchmarks/backbone.py for that).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dynamicvis_cli.bench import BenchOptions, bench_sizes, table
from dynamicvis_cli.infer.memory import parse_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[2000, 20000])
    p.add_argument("--layout", default="tiled", choices=["tiled", "striped"])
    p.add_argument("--model", default="tiny")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--vector", action="store_true", help="also polygonise the class raster")
    p.add_argument("--max-memory", default=None)
    p.add_argument("--memory-limit", default=None, help="run each scene in a memory cgroup of this size")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the generated scenes")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    opts = BenchOptions(model=args.model, classes=args.classes, tile=args.tile, overlap=args.overlap,
                        batch=args.batch, workers=args.workers, device=args.device, vector=args.vector,
                        max_memory=args.max_memory)
    limit = parse_size(args.memory_limit) if args.memory_limit else None
    report = bench_sizes(args.sizes, opts, layout=args.layout, workdir=args.tmp, limit=limit,
                         log=lambda row: print(json.dumps(row), file=sys.stderr))
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(table(report), file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
