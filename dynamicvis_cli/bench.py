"""End-to-end scene benchmark: generated GeoTIFFs of growing size through ``dvis segment``.

Each scene is generated window by window (a smooth, textured 3-band uint8 UTM raster with a
nodata border), in the layout asked for (``tiled``: 512-pixel blocks; ``striped``: GDAL's default
strips, what many tools fail on), then ``dvis segment`` runs on it as a child process, read →
model → stitch → COG write → polygons (``--vector``). Reported per size: wall time, megapixels
per second, the run's own stage times, and the peak RSS of the dvis process (``getrusage``,
measured inside the child). Used by ``dvis bench`` and ``benchmarks/engine.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynamicvis_cli.errors import DvisError, DvisUsageError

LAYOUTS = ("tiled", "striped")

#: Runs ``dvis`` in-process and reports its own peak RSS on stderr as the last line.
_WRAPPER = r"""
import json, resource, sys
from dynamicvis_cli.cli.app import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code or 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.stderr.write("\nDVIS_PEAK_RSS_MB " + json.dumps(peak) + "\n")
sys.exit(code)
"""


def parse_scene_size(text: str | int) -> tuple[int, int]:
    """'5000' → (5000, 5000); '40000x2000' → (width 40000, height 2000)."""
    parts = str(text).lower().split("x")
    try:
        width, height = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        width = height = 0
    if min(width, height) < 64:
        raise DvisUsageError(f"--scene {text}: expected SIZE or WIDTHxHEIGHT, at least 64 pixels each")
    return width, height


def make_scene(path: Path, size: int | str, *, layout: str = "tiled", rows_per_write: int = 1024) -> Path:
    """Write a ``size`` (side, or 'WxH') 3-band uint8 GeoTIFF (EPSG:32633, 0.5 m, nodata 0, DEFLATE)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if layout not in LAYOUTS:
        raise DvisUsageError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    width, height = parse_scene_size(size)
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 0.5, 0.5), "nodata": 0,
        "compress": "deflate", "num_threads": "all_cpus", "bigtiff": "if_safer",
    }
    if layout == "tiled":
        profile.update(tiled=True, blockxsize=512, blockysize=512)
    else:
        profile.update(tiled=False)  # GDAL's default strips (a few rows each)
    cols = np.arange(width, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, height, rows_per_write):
            h = min(rows_per_write, height - row)
            rows = np.arange(row, row + h, dtype=np.float32)[:, None]
            # Fields and roads: a smooth pattern with edges, cheap to make and to compress.
            base = 128 + 60 * np.sin(cols / 97.0)[None] * np.cos(rows / 71.0) + 30 * ((cols // 400 + rows // 400) % 2)
            band = np.clip(base, 1, 255).astype(np.uint8)
            band[:, :16] = 0  # a nodata border on the left
            ds.write(np.stack([band, np.roll(band, 7, axis=1), 255 - band]), window=Window(0, row, width, h))
    return path


@dataclass
class BenchOptions:
    model: str = "tiny"
    classes: int = 2
    tile: int = 512
    overlap: int = 64
    batch: int = 4
    workers: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    vector: bool = True
    max_memory: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def run_segment(scene: Path, out: Path, opts: BenchOptions, *, preexec_fn: Any = None) -> dict[str, Any]:
    """``dvis segment`` on ``scene`` in a child process; its summary, wall time and peak RSS."""
    cmd = [sys.executable, "-c", _WRAPPER, "segment", str(scene), "-o", str(out), "-m", opts.model,
           "--random-weights", "--classes", ",".join(f"c{i}" for i in range(opts.classes)),
           "--tile-size", str(opts.tile), "--overlap", str(opts.overlap), "--batch-size", str(opts.batch),
           "--workers", str(opts.workers), "--device", opts.device, "--precision", opts.precision,
           "-q", "--overwrite"]
    if opts.vector:
        cmd += ["--vector", str(out.with_suffix(".gpkg"))]
    if opts.max_memory:
        cmd += ["--max-memory", opts.max_memory]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **opts.extra_env},
                          preexec_fn=preexec_fn)
    wall = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    peak = next((json.loads(x.split()[1]) for x in reversed(lines) if x.startswith("DVIS_PEAK_RSS_MB")), None)
    if proc.returncode != 0:
        reason = next((x for x in lines if x.startswith("dvis:")), lines[-1] if lines else "")
        raise DvisError(f"{scene}: dvis segment failed with exit code {proc.returncode}: {reason}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    run = summary["runs"][0]
    return {"wall_s": round(wall, 2), "stage_s": run["seconds"], "tiles": run["tiles"],
            "polygons": run.get("polygons"), "batch_size": run.get("batch_size"),
            "peak_rss_mb": round(float(peak), 1) if peak is not None else None}


def check_output(scene: Path, out: Path) -> dict[str, Any]:
    """Is the output a valid COG (rio-cogeo, strict) on exactly the scene's grid?"""
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(out), strict=True)
    with rasterio.open(scene) as a, rasterio.open(out) as b:
        same = (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
    return {"cog_valid": bool(valid), "cog_errors": errors, "same_grid": same}


def bench_sizes(sizes: list[int | str], opts: BenchOptions, *, layout: str = "tiled", scene: Path | None = None,
                workdir: Path | None = None, log: Any = None, limit: int | None = None) -> dict[str, Any]:
    """Generate (or take) each scene, run it, and report one row per size.

    ``limit``: run each ``dvis segment`` in a memory cgroup of this many bytes (Linux, where
    this process may create one; the report says whether it could).
    """
    import platform

    rows = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="dvis-bench-") as tmp:
        inputs: list[tuple[int | str | None, Path]] = (
            [(None, scene)] if scene else [(s, Path(tmp) / f"scene{s}.tif") for s in sizes])
        for size, path in inputs:
            generate = None
            if size is not None:
                t = time.perf_counter()
                make_scene(path, size, layout=layout)
                generate = round(time.perf_counter() - t, 1)
            import rasterio

            with rasterio.open(path) as ds:
                width, height = ds.width, ds.height
            out = Path(tmp) / f"out-{width}.tif"
            with MemoryLimit(limit) if limit else contextlib.nullcontext() as cgroup:
                enter = cgroup.enter if cgroup is not None and cgroup.available else None
                row = {"size": f"{width}x{height}", "megapixels": round(width * height / 1e6, 2),
                       "layout": layout if size is not None else "given",
                       "scene_mb": round(path.stat().st_size / 2**20, 1), "generate_s": generate,
                       **run_segment(path, out, opts, preexec_fn=enter)}
                if cgroup is not None:
                    peak = cgroup.peak_bytes()
                    row.update(limit_mb=round(limit / 2**20) if enter else None,
                               cgroup_peak_mb=round(peak / 2**20, 1) if peak and enter else None,
                               oom_kills=cgroup.oom_kills())
            row["mp_per_s"] = round(row["megapixels"] / row["wall_s"], 3)
            row.update(check_output(path, out))
            out.unlink()
            rows.append(row)
            if log:
                log(row)
            if size is not None:
                path.unlink()
    return {"model": opts.model, "classes": opts.classes, "tile": opts.tile, "overlap": opts.overlap,
            "batch": opts.batch, "workers": opts.workers, "device": opts.device, "precision": opts.precision,
            "vector": opts.vector, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "rows": rows}


def table(report: dict[str, Any]) -> str:
    """The report's rows as a Markdown table."""
    head = "| scene | layout | MP | wall s | MP/s | peak RSS MB | read | model | stitch | write | cog | vector |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in report["rows"]:
        s = r["stage_s"]
        lines.append(f"| {r['size']} | {r['layout']} | {r['megapixels']} | {r['wall_s']} | {r['mp_per_s']} | "
                     f"{r['peak_rss_mb']} | {s.get('read', 0)} | {s.get('model', 0)} | {s.get('stitch', 0)} | "
                     f"{s.get('write', 0)} | {s.get('cog', 0)} | {s.get('vectorise', '-')} |")
    return "\n".join(lines)


class MemoryLimit:
    """A Linux memory cgroup (v1 or v2) capping the processes started with :meth:`enter`.

    A context manager; ``available`` is False where this process may not create cgroups (then
    nothing is limited and callers should say so). The limit counts what the kernel counts:
    resident memory of the process and its children, shared pages once.
    """

    def __init__(self, limit_bytes: int) -> None:
        import uuid

        self.limit = int(limit_bytes)
        self.group: Path | None = None
        self._procs = "cgroup.procs"
        name = f"dvis-limit-{uuid.uuid4().hex[:8]}"
        for line in Path("/proc/self/cgroup").read_text().splitlines() if Path("/proc/self/cgroup").exists() else []:
            _, controllers, own = line.split(":", 2)
            if controllers == "memory":  # v1
                base = Path("/sys/fs/cgroup/memory") / own.lstrip("/")
                self._try(base / name, "memory.limit_in_bytes")
            elif controllers == "" and self.group is None:  # v2
                base = Path("/sys/fs/cgroup") / own.lstrip("/")
                self._try(base / name, "memory.max")
            if self.group is not None:
                break

    def _try(self, group: Path, limit_file: str) -> None:
        try:
            group.mkdir()
        except OSError:
            return
        try:
            (group / limit_file).write_text(str(self.limit))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
            self.group = group
        except OSError:
            group.rmdir()

    @property
    def available(self) -> bool:
        return self.group is not None

    def enter(self) -> None:
        """``preexec_fn`` for subprocess: move the child into the group before it runs."""
        if self.group is not None:
            (self.group / self._procs).write_text(str(os.getpid()))

    def peak_bytes(self) -> int | None:
        """The group's peak usage (v1: includes page cache, which the kernel reclaims first)."""
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            if self.group is not None and (self.group / name).exists():
                return int((self.group / name).read_text().split()[0])
        return None

    def oom_kills(self) -> int:
        if self.group is None:
            return 0
        for name in ("memory.oom_control", "memory.events"):
            path = self.group / name
            if path.exists():
                for line in path.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def __enter__(self) -> MemoryLimit:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.group is not None:
            try:
                self.group.rmdir()
            except OSError:
                pass
