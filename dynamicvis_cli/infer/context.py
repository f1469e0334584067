"""What every scene command shares: device, precision, batching, progress, provenance, timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from dynamicvis_cli._version import __version__
from dynamicvis_cli.checkpoints.task import LoadedTaskModel
from dynamicvis_cli.errors import DvisUsageError, UnknownModelError
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
    max_memory: int | None = None  # bytes; None: no budget
    tta: str = "none"  # test-time augmentation: none, flips or d4 (see infer/tta.py)
    world: Any = None  # a distributed World sharing this scene's tiles; None: this process alone

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


T = TypeVar("T")


class Timer:
    """Wall time per stage (read, model, stitch, write, ...), for the JSON summary.

    Time goes to the innermost open :meth:`stage`, so a stage that calls another (stitching
    that writes finished blocks) reports only its own share; :meth:`lap` gives the time since the
    last mark to a stage, for straight-line code.
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._mark = time.perf_counter()

    @property
    def seconds(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self._seconds.items()}

    def _charge(self, stage: str | None) -> None:
        now = time.perf_counter()
        if stage is not None:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + now - self._mark
        self._mark = now

    def lap(self, stage: str) -> None:
        self._charge(stage)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge(self._stack[-1] if self._stack else None)
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge(self._stack.pop())

    def each(self, items: Iterable[T], name: str) -> Iterator[T]:
        """``items``, with the time spent waiting for each one charged to ``name``."""
        it = iter(items)
        while True:
            with self.stage(name):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item


def tiling(loaded: LoadedTaskModel, opts: RunOptions) -> tuple[int, int]:
    """(tile, overlap): the options, else the model's tile size and an eighth of it."""
    tile = opts.tile_size or loaded.config.tile_size
    overlap = opts.overlap if opts.overlap is not None else tile // 8
    if overlap >= tile:
        raise DvisUsageError(f"--overlap {overlap} must be smaller than --tile-size {tile}")
    return tile, overlap


class InputChecksums:
    """sha256 of the input files, computed in a background thread while the run goes on."""

    def __init__(self, paths: Sequence[Path]) -> None:
        from dynamicvis_cli.checkpoints.store import sha256

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvis-sha256")
        self._futures: list[tuple[Path, Future[str]]] = [
            (Path(p), self._pool.submit(sha256, Path(p))) for p in paths
        ]
        self._pool.shutdown(wait=False)

    def result(self) -> str:
        """'sha256:<hex>' per input, comma-separated (waits for the hashing to finish)."""
        return ",".join(f"sha256:{f.result()}" for _, f in self._futures)


def weights_digest(loaded: LoadedTaskModel) -> str:
    """'sha256:<hex>' of the checkpoint's weights file; 'random' when nothing was loaded."""
    from dynamicvis_cli.checkpoints.registry import resolve
    from dynamicvis_cli.checkpoints.store import weights_sha256

    if all(v == "random" for v in loaded.weights.values()):
        return "random"
    try:
        _, location = resolve(loaded.name)
    except UnknownModelError:  # a model built in memory, not from a name or checkpoint
        return "unknown"
    return f"sha256:{weights_sha256(location)}" if location is not None else "random"


def provenance(loaded: LoadedTaskModel, inputs: Sequence[Path], *,
               checksums: InputChecksums | None = None, **settings: Any) -> dict[str, Any]:
    """Tags written into outputs and the summary: which software, model, weights and settings.

    ``checksums``: the inputs' sha256 (:class:`InputChecksums`), waited for here; without it
    the tags have no ``inputs_sha256`` (a caller that hashes in the background adds it later).
    """
    tags: dict[str, Any] = {
        "dvis_version": __version__,
        "model": loaded.name,
        "task": loaded.config.task,
        "classes": ",".join(loaded.config.classes),
        "weights": ",".join(f"{k}={v}" for k, v in loaded.weights.items()),
        "weights_sha256": weights_digest(loaded),
        "inputs": ",".join(str(Path(p).resolve()) for p in inputs),
    }
    if checksums is not None:
        tags["inputs_sha256"] = checksums.result()
    tags.update({k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                 for k, v in settings.items() if v is not None})
    return tags


def run_model(loaded: LoadedTaskModel, device: torch.device, precision: str,
              *inputs: torch.Tensor) -> Any:
    """``loaded.module.predict(*inputs)`` without autograd, under autocast."""
    with torch.inference_mode(), autocast(device, precision):
        return loaded.module.predict(*inputs)


def fit_memory(loaded: LoadedTaskModel, opts: RunOptions, device: Any, *, tile: int, bands: int,
               inputs: int, stitcher: int) -> dict[str, Any] | None:
    """Under ``--max-memory``: measure one forward pass, then set the batch size and workers.

    Returns the plan for the summary, or None without a budget. ``opts`` is updated in place.
    """
    from dynamicvis_cli.infer.memory import current_rss, measure_activation, plan_memory

    if opts.max_memory is None:
        return None
    blank = [torch.zeros(1, bands, tile, tile, device=device) for _ in range(inputs)]
    # One pass, measured cold: it also compiles kernels and fills allocator pools, so the figure
    # is an upper bound per image (a warm pass would reuse freed memory and read too low).
    process = current_rss()
    per_image = measure_activation(lambda: run_model(loaded, device, opts.precision, *blank))
    tile_bytes = inputs * bands * tile * tile * 4 + tile * tile
    plan = plan_memory(opts.max_memory, process=process, per_image=per_image, tile_bytes=tile_bytes,
                       stitcher=stitcher, batch_size=opts.batch_size, workers=opts.workers)
    opts.batch_size, opts.workers = plan.batch_size, plan.workers
    return plan.summary()
