"""Many inputs: globs, output names from a template, --skip-existing, --shard k/N.

A run manifest (``--manifest``, ``--resume``: :mod:`~dynamicvis_cli.infer.manifest`) and the
ranks of a distributed run (:mod:`~dynamicvis_cli.infer.distributed`) narrow the jobs further,
in that order: shard, then resume, then the rank's share.

Sharding is by position in the sorted, de-duplicated input list, so N machines given the same
arguments and k = 1..N process disjoint subsets whose union is every input, with no coordination
(xargs, GNU parallel, Slurm arrays).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamicvis_cli.errors import DvisUsageError, InputNotFoundError


@dataclass(frozen=True)
class Job:
    """One input and where its output goes.

    Attributes:
        src: the input.
        out: its output.
        overwrite: replace an existing output even without ``--overwrite`` (what a killed run
            left behind, when resuming from a manifest).
        world: the ranks of a distributed run that share this input's tiles (an
            :class:`~dynamicvis_cli.infer.distributed.World`); None: one process runs it.
    """

    src: Path
    out: Path
    overwrite: bool = False
    world: Any = field(default=None, compare=False)


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Paths and glob patterns → sorted unique existing paths; an empty match is an error."""
    found: set[Path] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
            if not matches:
                raise DvisUsageError(f"{pattern}: no file matches this pattern")
            found.update(matches)
        else:
            path = Path(pattern)
            if not path.exists():
                raise InputNotFoundError(path)
            found.add(path)
    return sorted(found)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'k/N' (1 ≤ k ≤ N) → (k, N); None stays None."""
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DvisUsageError(f"--shard {text}: expected k/N, e.g. 2/8") from None
    if not 1 <= k <= n:
        raise DvisUsageError(f"--shard {text}: k must be between 1 and N")
    return k, n


def shard(items: Sequence[Path], spec: tuple[int, int] | None) -> list[Path]:
    """The k-th of N interleaved shares of ``items`` (item i goes to shard i mod N + 1)."""
    if spec is None:
        return list(items)
    k, n = spec
    return [p for i, p in enumerate(items) if i % n == k - 1]


def output_path(src: Path, out_dir: Path, template: str) -> Path:
    """Fill ``template`` ({stem}, {name}, {parent}) for ``src`` under ``out_dir``."""
    try:
        name = template.format(stem=src.stem, name=src.name, parent=src.parent.name)
    except (KeyError, IndexError) as exc:
        raise DvisUsageError(f"--name-template {template!r}: unknown field {exc}") from None
    return out_dir / name


def plan_jobs(
    inputs: Sequence[str],
    *,
    output: Path | None,
    out_dir: Path | None,
    template: str,
    shard_spec: str | None = None,
) -> list[Job]:
    """Inputs and -o/--out-dir → jobs. One input may use -o; several need --out-dir."""
    paths = shard(expand_inputs(inputs), parse_shard(shard_spec))
    if output is not None and out_dir is not None:
        raise DvisUsageError("give either -o/--output or --out-dir, not both")
    if output is not None:
        if len(paths) > 1 or shard_spec is not None:
            raise DvisUsageError(f"-o names one output but {len(paths)} inputs were given; use --out-dir")
        return [Job(p, output) for p in paths]
    if out_dir is None:
        raise DvisUsageError("no output: give -o/--output (one input) or --out-dir (many)")
    jobs = [Job(p, output_path(p, out_dir, template)) for p in paths]
    dupes = {j.out for j in jobs if sum(k.out == j.out for k in jobs) > 1}
    if dupes:
        raise DvisUsageError(f"--name-template {template!r} gives the same output for several inputs: "
                             f"{sorted(str(d) for d in dupes)[:3]}")
    return jobs
