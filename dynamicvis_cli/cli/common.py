"""Plumbing shared by the scene commands: progress on stderr, model loading for the bands."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamicvis_cli.cli.output import err


@contextlib.contextmanager
def progress_bar(quiet: bool, label: str) -> Iterator[Any]:
    """A (done, total) callback drawing a rich bar on stderr, or nothing when quiet/not a TTY."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def load_for_inputs(model: str, task: str, first_input: Path, *, bands: list[int] | None,
                    classes: list[str] | None, random_weights: bool, tile_size: int | None,
                    device: str, quiet: bool = False) -> tuple[Any, list[int]]:
    """Load the task model for the bands that will be read from ``first_input``.

    Bands: ``--bands`` if given (the model's first layer is adapted to their number), else the
    raster's first bands, as many as the model takes.
    """
    from dynamicvis_cli.checkpoints.registry import resolve
    from dynamicvis_cli.checkpoints.task import load_task_model
    from dynamicvis_cli.geo.read import RasterSource
    from dynamicvis_cli.infer.runner import resolve_device

    dev = resolve_device(device)
    config, _ = resolve(model)
    with RasterSource(first_input) as src:
        chosen = src.resolve_bands(bands, len(bands) if bands else config.backbone.in_chans)
    loaded = load_task_model(model, task, classes=classes, in_chans=len(chosen), tile_size=tile_size,
                             random_weights=random_weights, device=dev)
    if loaded.random and not quiet:
        err.print(f"[yellow]warning:[/] {model}: running with random weights ({loaded.weights}); "
                  "results are meaningless except for testing")
    return loaded, chosen


def weights_summary(loaded: Any) -> dict[str, Any]:
    return {"model": loaded.name, "task": loaded.config.task, "classes": loaded.config.classes,
            "weights": loaded.weights, "random_weights": loaded.random}


def run_scene_jobs(command: str, task: str, jobs: list[Any], *, skip_existing: bool, quiet: bool,
                   load: dict[str, Any], run: Any, max_memory: str | None = None,
                   summary_to_stderr: bool = False) -> None:
    """Load the model once, run ``run(loaded, bands, job, progress)`` per job, emit the summary.

    One input: its error is the command's error. Several: a failing input is reported (stderr,
    and under ``failed`` in the summary) and the others still run; then the exit code is 4, or 1
    when every input failed. The summary ends with the peak RSS of this process and its reader
    workers, and the wall time.
    """
    import time

    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.errors import DvisError, SomeInputsFailedError
    from dynamicvis_cli.infer.memory import MB, parse_size, peak_rss, set_gdal_cache

    start = time.perf_counter()
    budget = parse_size(max_memory) if max_memory is not None else None
    set_gdal_cache(budget)  # before the first raster is read
    todo = [j for j in jobs if not (skip_existing and str(j.out) != "-" and j.out.exists())]
    skipped = [str(j.out) for j in jobs if j not in todo]
    if not todo:
        emit({"command": command, "runs": [], "failed": [], "skipped_existing": skipped},
             stderr=summary_to_stderr)
        return
    loaded, chosen = load_for_inputs(task=task, first_input=todo[0].src, quiet=quiet, **load)
    runs, failed = [], []
    for job in todo:
        try:
            with progress_bar(quiet, f"{command} {job.src.name}") as bar:
                runs.append(run(loaded, chosen, job, bar))
        except Exception as exc:
            if len(todo) == 1:
                raise
            known = isinstance(exc, DvisError)
            message = str(exc) if known else f"internal error: {type(exc).__name__}: {exc}"
            failed.append({"input": str(job.src), "output": str(job.out), "error": message,
                           "exit_code": exc.exit_code if known else 1})
            if not quiet:
                err.print(f"[red]failed:[/] {job.src}: {message}", markup=True)
    peak = peak_rss()
    emit({"command": command, **weights_summary(loaded), "runs": runs, "failed": failed,
          "skipped_existing": skipped,
          "peak_rss_mb": {"main": round(peak["self"] / MB, 1), "children": round(peak["children"] / MB, 1)},
          "wall_s": round(time.perf_counter() - start, 3)}, stderr=summary_to_stderr)
    if failed and len(failed) == len(todo):
        raise DvisError(f"all {len(todo)} inputs failed (listed under 'failed' in the summary)")
    if failed:
        raise SomeInputsFailedError(len(failed), len(todo))
