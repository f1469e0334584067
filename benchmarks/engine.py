"""End-to-end scene throughput and peak memory of ``dvis segment`` against scene size.

    python benchmarks/engine.py --sizes 2000 20000 [--model tiny] [--out benchmarks/results/engine-cpu.json]

For each size a 3-band uint8 GeoTIFF (UTM, tiled 512, DEFLATE) is generated window by window in
a temporary folder (textured content, a nodata border), then ``dvis segment`` runs on it as a
real subprocess: read → model → stitch → COG write. Reported: wall time, megapixels per second,
and the peak RSS of the dvis process (its own, and the largest of its reader workers). The model
is the tiny architecture with random weights by default: this measures the engine (reading,
batching, stitching, writing), not the backbone, whose speed benchmarks/backbone.py measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

WRAPPER = r"""
import resource, sys, json
from dynamicvis_cli.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write("RSS " + json.dumps({"self_mb": ru_self / 1024, "workers_mb": ru_kids / 1024}) + "\n")
sys.exit(code)
"""


def make_scene(path: Path, size: int) -> None:
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 0.5, 0.5), "nodata": 0,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, 1024):
            h = min(1024, size - row)
            yy, xx = np.mgrid[row:row + h, 0:size]
            base = ((np.sin(xx / 37.0) + np.cos(yy / 23.0)) * 60 + 128).astype(np.uint8)
            noise = rng.integers(0, 20, size=(h, size), dtype=np.uint8)
            band = np.clip(base + noise, 1, 255).astype(np.uint8)
            band[:, :16] = 0  # a nodata border on the left
            ds.write(np.stack([band, band[::-1] if h > 1 else band, 255 - band]), window=Window(0, row, size, h))


def run(scene: Path, out: Path, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, "-c", WRAPPER, "segment", str(scene), "-o", str(out), "-m", args.model,
           "--random-weights", "--classes", ",".join(f"c{i}" for i in range(args.classes)),
           "--tile-size", str(args.tile), "--overlap", str(args.overlap), "--batch-size", str(args.batch),
           "--workers", str(args.workers), "--device", args.device, "-q", "--overwrite"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"dvis segment failed: {proc.stderr.strip()[-500:]}")
    rss = json.loads(next(l for l in proc.stderr.splitlines() if l.startswith("RSS "))[4:])
    summary = json.loads(proc.stdout)["runs"][0]
    return {"wall_s": round(wall, 2), "stage_s": summary["seconds"], "tiles": summary["tiles"],
            "peak_rss_mb": round(rss["self_mb"], 1), "peak_worker_rss_mb": round(rss["workers_mb"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[2000, 20000])
    p.add_argument("--model", default="tiny")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the generated scenes")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.sizes:
            scene = Path(tmp) / f"scene{size}.tif"
            t = time.perf_counter()
            make_scene(scene, size)
            gen = time.perf_counter() - t
            row = {"size": size, "megapixels": size * size / 1e6, "scene_mb": round(scene.stat().st_size / 2**20, 1),
                   "generate_s": round(gen, 1), **run(scene, Path(tmp) / f"out{size}.tif", args)}
            row["mp_per_s"] = round(row["megapixels"] / row["wall_s"], 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            scene.unlink()
    report = {"model": args.model, "classes": args.classes, "tile": args.tile, "overlap": args.overlap,
              "batch": args.batch, "workers": args.workers, "device": args.device,
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
