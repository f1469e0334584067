"""End-to-end scene throughput and peak memory of ``dvis segment`` against scene size.

    python benchmarks/engine.py --sizes 2000 20000 [--layout tiled|striped] [--model tiny]
        [--workers 1] [--memory-limit 4G] [--nproc 1 2] [--out benchmarks/results/engine-cpu.json]

A thin wrapper over :mod:`dynamicvis_cli.bench` (what ``dvis bench`` runs): each scene is a
generated 3-band uint8 GeoTIFF (UTM, DEFLATE, a nodata border), ``dvis segment`` runs on it as a
child process (read → model → stitch → COG write), and the report gives wall time, megapixels
per second, stage times and the peak RSS of the dvis process. The model is the tiny
architecture with random weights: this measures the engine, not the backbone (see
benchmarks/backbone.py for that).

``--nproc 1 2``: run each scene once per process count, as ``dvis segment --devices cpu,cpu``
(gloo ranks sharing the scene's tile rows; each rank gets ``cpu_count / N`` threads) for N > 1
and the plain run for N = 1, with the same weights (drawn once, saved as a checkpoint), and count
the pixels whose class differs from the first run's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynamicvis_cli.bench import BenchOptions, bench_sizes, check_output, make_scene, run_segment, table
from dynamicvis_cli.infer.memory import parse_size


def run_ranks(scene: Path, out: Path, opts: BenchOptions, nproc: int) -> dict[str, Any]:
    """``dvis segment --devices cpu,...`` (``nproc`` gloo ranks) on ``scene``: wall time and summary."""
    cmd = [sys.executable, "-m", "dynamicvis_cli", "segment", str(scene), "-o", str(out), "-m", opts.model,
           "--random-weights", "--classes", ",".join(f"c{i}" for i in range(opts.classes)),
           "--tile-size", str(opts.tile), "--overlap", str(opts.overlap), "--batch-size", str(opts.batch),
           "--workers", str(opts.workers), "--precision", opts.precision, "-q", "--overwrite",
           "--devices", ",".join([opts.device] * nproc)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{scene}: {nproc} ranks failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    run = summary["runs"][0]
    return {"wall_s": round(wall, 2), "stage_s": run["seconds"], "tiles": run["tiles"],
            "tiles_recomputed": run.get("ranks", {}).get("tiles_recomputed", 0),
            "model_s_per_rank": run.get("ranks", {}).get("model_s"),
            "peak_rss_mb": summary["peak_rss_mb"]["main"]}


def bench_processes(sizes: list[int], opts: BenchOptions, counts: list[int], *, layout: str,
                    workdir: Path | None) -> dict[str, Any]:
    """One row per (scene size, process count); the class rasters must be identical across counts.

    The random weights are drawn once and saved as a checkpoint, so that every run uses the same.
    """
    import dataclasses

    import torch

    from dynamicvis_cli.checkpoints.store import save_checkpoint
    from dynamicvis_cli.checkpoints.task import load_task_model

    rows = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="dvis-bench-") as tmp:
        torch.manual_seed(0)
        loaded = load_task_model(opts.model, "segment", classes=[f"c{i}" for i in range(opts.classes)],
                                 random_weights=True)
        model = save_checkpoint(loaded.module.state_dict(), loaded.config, Path(tmp) / "model")
        name, opts = opts.model, dataclasses.replace(opts, model=str(model))
        for size in sizes:
            scene = make_scene(Path(tmp) / f"scene{size}.tif", size, layout=layout)
            first = None
            for n in counts:
                out = Path(tmp) / f"out-{size}-{n}.tif"
                # The plain run gets its own peak RSS from inside the process (the wrapper).
                row = run_segment(scene, out, opts) if n == 1 else run_ranks(scene, out, opts, n)
                import rasterio

                with rasterio.open(out) as ds:
                    classes = ds.read(1)
                first = classes if first is None else first
                row = {"size": f"{size}x{size}", "megapixels": round(size * size / 1e6, 2), "processes": n,
                       **row, **check_output(scene, out),
                       # Against the first count's raster: the split is exact, but one process
                       # with 2 threads may round a probability differently from 1 thread each.
                       "pixels_differing": int((classes != first).sum())}
                row["mp_per_s"] = round(row["megapixels"] / row["wall_s"], 3)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                out.unlink()
            scene.unlink()
    return {"model": name, "classes": opts.classes, "tile": opts.tile, "overlap": opts.overlap,
            "batch": opts.batch, "workers": opts.workers, "device": opts.device, "layout": layout,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "rows": rows}


def process_table(report: dict[str, Any]) -> str:
    """The --nproc report's rows as a Markdown table."""
    lines = ["| scene | processes | wall s | MP/s | model s (rank 0) | tiles recomputed | pixels differing |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['size']} | {r['processes']} | {r['wall_s']} | {r['mp_per_s']} | "
                     f"{r['stage_s'].get('model', 0)} | {r.get('tiles_recomputed', 0)} | "
                     f"{r['pixels_differing']} |")
    return "\n".join(lines)


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
    p.add_argument("--nproc", type=int, nargs="+", default=None,
                   help="compare these process counts (gloo ranks via --devices), e.g. 1 2")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    opts = BenchOptions(model=args.model, classes=args.classes, tile=args.tile, overlap=args.overlap,
                        batch=args.batch, workers=args.workers, device=args.device, vector=args.vector,
                        max_memory=args.max_memory)
    if args.nproc:
        report = bench_processes(args.sizes, opts, args.nproc, layout=args.layout, workdir=args.tmp)
        text = json.dumps(report, indent=1)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        print(process_table(report), file=sys.stderr)
        print(text)
        return
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
