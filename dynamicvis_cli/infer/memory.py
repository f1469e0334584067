"""Host memory: measuring it (peak RSS) and fitting a run into ``--max-memory``.

What a scene run holds is a few fixed amounts plus one that grows with the batch:

- the process itself: Python, torch, the model (read as the current RSS once the model is loaded);
- the model's activations, per image of a batch: *measured*, by one forward pass on a blank tile
  with the kernel's peak-RSS mark reset before it (``/proc/self/clear_refs``), so the figure
  fits any architecture, head, tile size and precision rather than being a guess. The pass is
  the run's first, so it also counts one-time costs (kernel compilation, allocator pools): an
  upper bound, which errs on the side of a smaller batch;
- the reader queue: ``workers × 2`` batches of tiles waiting (prefetch), each tile its bands as
  float32 plus a validity mask;
- GDAL's block cache, in every process that reads (capped by ``GDAL_CACHEMAX``);
- the dense stitcher's strip, about ``(overlap + tile) × width × (classes + 1) × 4`` bytes.

:func:`plan_memory` chooses the largest batch size (up to the one asked for) whose total fits the
budget with a 10 % margin, or explains what does not fit. Peak RSS comes from ``getrusage``:
the process's own and the largest of its finished children (reader workers).
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dynamicvis_cli.errors import DvisUsageError

MB = 1 << 20
#: Fraction of the budget kept free for what the estimate does not see (allocator slack, GDAL).
MARGIN = 0.10
#: GDAL block cache per process when a budget is set (it defaults to 5 % of RAM otherwise).
GDAL_CACHE_CAP = 96 * MB
PREFETCH = 2  # batches each reader worker keeps ready (torch DataLoader's prefetch_factor)

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": MB, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5G', '300000000' → bytes (binary units; a trailing 'B'/'iB' is allowed).

    Raises:
        DvisUsageError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if not match or float(match.group(1)) <= 0:
        raise DvisUsageError(f"--max-memory {text!r}: expected a size such as 4G, 1500M or 2.5G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def current_rss() -> int:
    """Resident bytes of this process now (Linux ``/proc/self/statm``; else the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()["self"]


def peak_rss() -> dict[str, int]:
    """Peak resident bytes: this process, and the largest of its waited-for children."""
    scale = 1 if os.uname().sysname == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"self": int(own), "children": int(kids)}


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm() -> int | None:
    """This process's peak RSS since the last :func:`reset_peak` (VmHWM), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_activation(run: Any) -> int:
    """Peak extra resident bytes while ``run()`` executes (0 where it cannot be measured)."""
    base = current_rss()
    if not reset_peak():
        run()
        return 0
    run()
    peak = vm_hwm()
    return max(0, (peak or base) - base)


@dataclass
class MemoryPlan:
    """What a budget allows, reported in the run summary (sizes in MB)."""

    max_memory_mb: float
    process_mb: float
    per_image_mb: float
    queue_per_image_mb: float
    stitcher_mb: float
    gdal_cache_mb: float
    batch_size: int
    workers: int

    def summary(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def plan_memory(
    max_bytes: int,
    *,
    process: int,
    per_image: int,
    tile_bytes: int,
    stitcher: int,
    batch_size: int,
    workers: int,
) -> MemoryPlan:
    """The largest batch (≤ ``batch_size``) whose run fits ``max_bytes``; fewer workers if needed.

    Args:
        max_bytes: the budget.
        process: resident bytes before the run (interpreter, libraries, model).
        per_image: activation bytes per image of a batch (measured).
        tile_bytes: bytes of one tile as read (all inputs' bands as float32, plus the mask).
        stitcher: bytes the stitcher holds at most.
        batch_size: the batch asked for.
        workers: reader worker processes asked for.

    Raises:
        DvisUsageError: even one image per batch, read in this process, does not fit.
    """
    usable = max_bytes * (1 - MARGIN)
    gdal = min(GDAL_CACHE_CAP, max_bytes // 20)
    for w in sorted({workers, min(workers, 1), 0}, reverse=True):
        fixed = process + stitcher + gdal * (1 + w)
        per = per_image + tile_bytes * (1 + PREFETCH * w)
        batch = int((usable - fixed) // per) if per > 0 else batch_size
        if batch >= 1:
            return MemoryPlan(max_bytes / MB, process / MB, per_image / MB, tile_bytes / MB,
                              stitcher / MB, gdal / MB, min(batch, batch_size), w)
    need = (process + stitcher + gdal + per_image + tile_bytes) / (1 - MARGIN)
    raise DvisUsageError(
        f"--max-memory {max_bytes / MB:.0f}M is too small: this model at this tile size needs "
        f"about {need / MB:.0f}M (process {process / MB:.0f}M, one image {per_image / MB:.0f}M); "
        "lower --tile-size or raise --max-memory"
    )


def set_gdal_cache(max_bytes: int | None) -> None:
    """Cap GDAL's block cache before any raster is read (each reader process gets its own)."""
    if max_bytes is not None:
        os.environ["GDAL_CACHEMAX"] = str(max(16, min(GDAL_CACHE_CAP, max_bytes // 20) // MB))
