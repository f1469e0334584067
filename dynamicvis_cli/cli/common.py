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

    Bands: ``--bands`` if given (the model's first layer is adapted to their number), else those
    the checkpoint was trained on (its ``band_indexes``), else the raster's first bands, as many
    as the model takes.
    """
    from dynamicvis_cli.checkpoints.registry import resolve
    from dynamicvis_cli.checkpoints.task import load_task_model
    from dynamicvis_cli.geo.read import RasterSource
    from dynamicvis_cli.infer.runner import resolve_device

    dev = resolve_device(device)
    config, _ = resolve(model)
    with RasterSource(first_input) as src:
        chosen = src.resolve_bands(bands, len(bands) if bands else config.backbone.in_chans,
                                   default=config.band_indexes)
    loaded = load_task_model(model, task, classes=classes, in_chans=len(chosen), tile_size=tile_size,
                             random_weights=random_weights, device=dev)
    if loaded.random and not quiet:
        err.print(f"[yellow]warning:[/] {model}: running with random weights ({loaded.weights}); "
                  "results are meaningless except for testing")
    return loaded, chosen


def weights_summary(loaded: Any) -> dict[str, Any]:
    return {"model": loaded.name, "task": loaded.config.task, "classes": loaded.config.classes,
            "weights": loaded.weights, "random_weights": loaded.random}


def start_ranks(device: str, devices: str | None) -> str:
    """``--devices``: the device this process runs on, after starting the ranks if needed.

    Outside a launcher with several devices, re-runs this very command line once per device
    through torch.distributed.run and exits with its exit code (rank 0's); under a launcher
    (torchrun, or that re-run), returns this rank's device. Imports no torch unless it launches.
    """
    from dynamicvis_cli.infer.distributed import env_rank, launch, parse_devices, rank_device

    listed = parse_devices(devices)
    if listed and len(listed) > 1 and env_rank() is None:
        import typer

        raise typer.Exit(launch(sys.argv[1:], listed))
    return rank_device(device, listed)


def run_scene_jobs(command: str, task: str, jobs: list[Any], *, skip_existing: bool, quiet: bool,
                   load: dict[str, Any], run: Any, max_memory: str | None = None,
                   summary_to_stderr: bool = False, manifest: Path | None = None, resume: bool = False,
                   force: bool = False, settings: dict[str, Any] | None = None,
                   split_tiles: bool = True) -> None:
    """Load the model once, run ``run(loaded, bands, job, progress)`` per job, emit the summary.

    One input: its error is the command's error. Several: a failing input is reported (stderr,
    and under ``failed`` in the summary) and the others still run; then the exit code is 4, or 1
    when every input failed. The summary ends with the peak RSS of this process and its reader
    workers, and the wall time.

    Under torchrun (or ``--devices``) the jobs are shared among the ranks: one input each in
    turn when there are at least as many inputs as ranks, else every rank works on every input's
    tiles (``split_tiles``; the jobs carry the :class:`World`); rank 0 prints the one summary.
    ``manifest``: append a line per finished input (:mod:`~dynamicvis_cli.infer.manifest`);
    with ``resume`` skip the inputs it records as done, redo the rest; ``settings`` are the
    flags that change results (part of the manifest's key); ``force`` accepts a manifest written
    under another key.
    """
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.infer.distributed import init_world
    from dynamicvis_cli.infer.memory import parse_size, set_gdal_cache

    if resume and manifest is None:
        raise DvisUsageError("--resume needs --manifest FILE (the manifest of the run to resume)")
    if manifest is not None and any(str(j.out) == "-" for j in jobs):
        raise DvisUsageError("--manifest records output files; it cannot be used with -o -")
    budget = parse_size(max_memory) if max_memory is not None else None
    set_gdal_cache(budget)  # before the first raster is read
    world = init_world(load["device"])
    with rank_errors(world):
        _run_jobs(command, task, jobs, world=world, skip_existing=skip_existing, quiet=quiet, load=load,
                  run=run, summary_to_stderr=summary_to_stderr, manifest=manifest, resume=resume,
                  force=force, settings=settings or {}, split_tiles=split_tiles)


@contextlib.contextmanager
def rank_errors(world: Any) -> Iterator[None]:
    """Run a command's work on this rank: rank 0 reports a failure (its own or another rank's),
    the other ranks exit with its code silently; the process group is shut down in any case."""
    from dynamicvis_cli.infer.distributed import RankFailedError, ReportedElsewhere, shutdown

    try:
        yield
    except (RankFailedError, ReportedElsewhere) as exc:
        if world.main:
            raise
        import typer

        raise typer.Exit(exc.exit_code) from None  # rank 0 reports it
    finally:
        shutdown()


def peak_rss_summary() -> dict[str, float]:
    """The summary's ``peak_rss_mb``: this process and its largest child, in MB."""
    from dynamicvis_cli.infer.memory import MB, peak_rss

    peak = peak_rss()
    return {"main": round(peak["self"] / MB, 1), "children": round(peak["children"] / MB, 1)}


def _plan_resume(jobs: list[Any], manifest: Path | None, key: Any, *, resume: bool, force: bool,
                 quiet: bool) -> tuple[list[Any], list[str], list[dict[str, str]]]:
    """(jobs to run, inputs recorded as done, inputs redone with the reason) under a manifest."""
    import dataclasses

    from dynamicvis_cli.infer.manifest import Manifest, remove_stale_temporaries

    if manifest is None:
        return jobs, [], []
    book = Manifest(manifest, key, force=force)
    if not resume:
        return jobs, [], []
    todo, done, redone = [], [], []
    for job in jobs:
        decision = book.decide(job.src, [job.out])
        if decision.done:
            done.append(str(job.src))
            continue
        if decision.reason != "not in the manifest":
            redone.append({"input": str(job.src), "reason": decision.reason})
            if not quiet:
                err.print(f"[yellow]redo:[/] {job.src}: {decision.reason}")
        remove_stale_temporaries(job.out)
        # What a killed run left (an output renamed but not yet recorded) is replaced.
        todo.append(dataclasses.replace(job, overwrite=True))
    return todo, done, redone


def _run_jobs(command: str, task: str, jobs: list[Any], *, world: Any, skip_existing: bool, quiet: bool,
              load: dict[str, Any], run: Any, summary_to_stderr: bool, manifest: Path | None, resume: bool,
              force: bool, settings: dict[str, Any], split_tiles: bool) -> None:
    import dataclasses
    import time

    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.errors import DvisError, SomeInputsFailedError
    from dynamicvis_cli.infer.distributed import describe_failure, rank_share
    from dynamicvis_cli.infer.memory import MB, peak_rss

    start = time.perf_counter()
    # Rank 0 decides what to run (outputs appear while ranks work), the others follow.
    todo = [j for j in jobs if not (skip_existing and str(j.out) != "-" and j.out.exists())]
    todo = world.broadcast(todo)
    skipped = [str(j.out) for j in jobs if j not in todo]
    if not todo and manifest is None:
        if world.main:
            emit({"command": command, "runs": [], "failed": [], "skipped_existing": skipped},
                 stderr=summary_to_stderr)
        return
    loaded, chosen = load_for_inputs(task=task, first_input=(todo or jobs)[0].src,
                                     quiet=quiet or not world.main, **load)
    if loaded.random:
        world.broadcast_module(loaded.module)  # every rank runs rank 0's random weights
    key = None
    done: list[str] = []
    redone: list[dict[str, str]] = []
    if manifest is not None:
        from dynamicvis_cli.infer.context import weights_digest
        from dynamicvis_cli.infer.manifest import RunKey

        key = RunKey(loaded.name, weights_digest(loaded),
                     {"command": command, "task": loaded.config.task, "classes": loaded.config.classes,
                      "bands": chosen, **settings})
        planned: Any = None
        if world.main:
            try:
                planned = _plan_resume(todo, manifest, key, resume=resume, force=force, quiet=quiet)
            except DvisError as exc:
                planned = exc
        planned = world.broadcast(planned)
        if isinstance(planned, DvisError):
            if world.main:
                raise planned
            from dynamicvis_cli.infer.distributed import ReportedElsewhere

            raise ReportedElsewhere(planned.exit_code)
        todo, done, redone = planned
    book = None
    if manifest is not None:
        from dynamicvis_cli.infer.manifest import Manifest

        assert key is not None
        book = Manifest(manifest, key, force=True)  # checked above; this process appends to it
    split = "inputs" if len(todo) >= world.size or not split_tiles else "tiles"
    if not world.distributed:
        mine = todo
    elif split == "inputs":
        mine = rank_share(todo, world)
    else:
        mine = [dataclasses.replace(j, world=world) for j in todo]
    records = split == "inputs" or world.main  # who appends an input's manifest line
    runs: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for job in mine:
        try:
            with progress_bar(quiet or not world.main, f"{command} {job.src.name}") as bar:
                t0 = time.perf_counter()
                result = run(loaded, chosen, job, bar)
            if book is not None and records:
                outputs = [result[k] for k in ("output", "vector", "quicklook") if result.get(k)]
                book.record(job.src, [Path(o) for o in outputs], rank=world.rank,
                            seconds=round(time.perf_counter() - t0, 3))
            runs.append(result)
        except Exception as exc:
            if len(todo) == 1:
                raise
            message, code = describe_failure(exc)
            failed.append({"input": str(job.src), "output": str(job.out), "error": message,
                           "exit_code": code})
            if not quiet and (split == "inputs" or world.main):
                err.print(f"[red]failed:[/] {job.src}: {message}", markup=True)
    peak = peak_rss()
    mine_summary: dict[str, Any] = {"runs": runs, "failed": failed, "peak": peak}
    shares = world.gather(mine_summary) if split == "inputs" else [mine_summary]
    if not world.main:
        return
    assert shares is not None
    order = {str(j.src): i for i, j in enumerate(todo)}
    runs = sorted((r for s in shares for r in s["runs"]),
                  key=lambda r: order.get(str(r.get("input")), len(order)))
    failed = sorted((f for s in shares for f in s["failed"]),
                    key=lambda f: order.get(str(f["input"]), len(order)))
    summary: dict[str, Any] = {"command": command, **weights_summary(loaded), "runs": runs, "failed": failed,
                               "skipped_existing": skipped}
    if manifest is not None:
        summary["manifest"] = {"path": str(manifest), "skipped_done": done, "redone": redone}
    if world.distributed:
        summary["ranks"] = {"count": world.size, "split": split}
    summary.update({
        "peak_rss_mb": {**peak_rss_summary(),
                        **({"ranks": [round(s["peak"]["self"] / MB, 1) for s in shares]}
                           if split == "inputs" and world.distributed else {})},
        "wall_s": round(time.perf_counter() - start, 3)})
    emit(summary, stderr=summary_to_stderr)
    if failed and len(failed) == len(todo):
        raise DvisError(f"all {len(todo)} inputs failed (listed under 'failed' in the summary)")
    if failed:
        raise SomeInputsFailedError(len(failed), len(todo))
