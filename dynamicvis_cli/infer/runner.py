"""Read tiles in worker processes, batch them, run the model on a device in a precision.

Each reader worker opens its own raster handles (GDAL handles must not cross processes): the
dataset object carries only paths and options, and opens lazily in whichever process reads.
Tiles whose pixels are all invalid (nodata, masked, outside the scene) are read but not run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from dynamicvis_cli.errors import DvisUsageError


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; an unavailable CUDA device is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DvisUsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DvisUsageError(f"--device {device}: no CUDA device is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DvisUsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise DvisUsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return dev


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for bf16/fp16; nothing for fp32. fp16 on CPU is refused (too slow, inexact)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise DvisUsageError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class ReaderSpec:
    """What one worker needs to read an input: path, bands, normalisation, optional alignment.

    ``align_onto``: warp this raster onto that raster's grid (change detection's --align).
    """

    path: Path
    bands: list[int]
    mean: list[float]
    std: list[float]
    stretch: Any = None
    align_onto: Path | None = None
    resampling: str = "bilinear"


@dataclass
class Tile:
    """One tile ready for the model: normalised images (one per input) and a validity mask."""

    index: int
    window: Window
    images: list[torch.Tensor]          # each (bands, h, w) float32, invalid pixels set to 0
    valid: torch.Tensor                 # (h, w) bool: valid in every input


class TileDataset(Dataset[Tile]):
    """Windows of one or more co-registered inputs (two for change detection)."""

    def __init__(self, specs: Sequence[ReaderSpec], windows: Sequence[Window]) -> None:
        self.specs = list(specs)
        self.windows = list(windows)
        self._readers: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def _open(self) -> list[Any]:
        from dynamicvis_cli.geo.crs import aligned
        from dynamicvis_cli.geo.read import RasterSource

        readers = []
        for spec in self.specs:
            src = RasterSource(spec.path)
            if spec.align_onto is not None:
                # aligned() re-opens both files by path, so the handles used to build it close.
                with src, RasterSource(spec.align_onto) as onto:
                    src = aligned(src, onto=onto, resampling=spec.resampling)
            readers.append(src)
        return readers

    def __getitem__(self, i: int) -> Tile:
        from dynamicvis_cli.geo.read import normalise

        if self._readers is None:
            self._readers = self._open()
        window = self.windows[i]
        images, valid = [], None
        for spec, reader in zip(self.specs, self._readers):
            data, ok = reader.read(window, spec.bands)
            norm = normalise(data, reader.dtype, spec.mean, spec.std, stretch=spec.stretch)
            norm = np.where(ok[None], norm, 0.0).astype(np.float32)
            images.append(torch.from_numpy(norm))
            valid = ok if valid is None else (valid & ok)
        assert valid is not None
        return Tile(i, window, images, torch.from_numpy(np.ascontiguousarray(valid)))


def _collate(tiles: list[Tile]) -> list[Tile]:
    return tiles


@dataclass
class RunStats:
    tiles: int = 0
    skipped_invalid: int = 0
    batches: int = 0


def iterate_batches(
    dataset: TileDataset, *, batch_size: int, workers: int, stats: RunStats | None = None
) -> Iterator[list[Tile]]:
    """Batches of tiles with at least one valid pixel, in window order."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=2 if workers else None)
    for batch in loader:
        keep = [t for t in batch if bool(t.valid.any())]
        if stats is not None:
            stats.tiles += len(batch)
            stats.skipped_invalid += len(batch) - len(keep)
            stats.batches += 1 if keep else 0
        if keep:
            yield keep


def stack(tiles: Sequence[Tile], which: int, device: torch.device) -> torch.Tensor:
    """(B, bands, h, w) on ``device`` from input ``which`` of each tile."""
    return torch.stack([t.images[which] for t in tiles]).to(device, non_blocking=True)
