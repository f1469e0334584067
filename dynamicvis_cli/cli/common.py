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
                   load: dict[str, Any], run: Any) -> None:
    """Load the model once, run ``run(loaded, bands, job, progress)`` per job, emit the summary."""
    from dynamicvis_cli.cli.output import emit

    todo = [j for j in jobs if not (skip_existing and j.out.exists())]
    skipped = [str(j.out) for j in jobs if j not in todo]
    if not todo:
        emit({"command": command, "runs": [], "skipped_existing": skipped})
        return
    loaded, chosen = load_for_inputs(task=task, first_input=todo[0].src, quiet=quiet, **load)
    runs = []
    for job in todo:
        with progress_bar(quiet, f"{command} {job.src.name}") as bar:
            runs.append(run(loaded, chosen, job, bar))
    emit({"command": command, **weights_summary(loaded), "runs": runs, "skipped_existing": skipped})
