"""What every scene command shares: device, precision, batching, progress, provenance, timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dynamicvis_cli._version import __version__
from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.runner import autocast, resolve_device

ProgressFn = Callable[[int, int], None]  # (done, total) tiles


@dataclass
class RunOptions:
    """Options of a run, as the CLI gives them (None: the model's own value)."""

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 4
    workers: int = 0
    tile_size: int | None = None
    overlap: int | None = None
    overwrite: bool = False
    progress: ProgressFn | None = None

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


@dataclass
class Timer:
    """Wall time per stage (read+model, stitch, write...), for the JSON summary."""

    seconds: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._start, 3)
        self._start = now


def tiling(loaded: LoadedTaskModel, opts: RunOptions) -> tuple[int, int]:
    """(tile, overlap): the options, else the model's tile size and an eighth of it."""
    tile = opts.tile_size or loaded.config.tile_size
    overlap = opts.overlap if opts.overlap is not None else tile // 8
    if overlap >= tile:
        raise DvisUsageError(f"--overlap {overlap} must be smaller than --tile-size {tile}")
    return tile, overlap


def provenance(loaded: LoadedTaskModel, inputs: Sequence[Path], **settings: Any) -> dict[str, Any]:
    """Tags written into outputs and the summary: which software, model, weights and settings."""
    tags: dict[str, Any] = {
        "dvis_version": __version__,
        "model": loaded.name,
        "task": loaded.config.task,
        "classes": ",".join(loaded.config.classes),
        "weights": ",".join(f"{k}={v}" for k, v in loaded.weights.items()),
        "inputs": ",".join(str(p) for p in inputs),
    }
    tags.update({k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in settings.items()})
    return tags


def run_model(loaded: LoadedTaskModel, device: torch.device, precision: str,
              *inputs: torch.Tensor) -> Any:
    """``loaded.module.predict(*inputs)`` without autograd, under autocast."""
    with torch.inference_mode(), autocast(device, precision):
        return loaded.module.predict(*inputs)
