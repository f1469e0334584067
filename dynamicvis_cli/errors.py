"""One exception hierarchy for every user-facing failure.

Each class also derives from the matching builtin (as rasterio does), so library users can catch
``FileNotFoundError`` or ``ValueError`` as usual, while the CLI catches :class:`DvisError` and maps
``exit_code`` to the process exit status. This module imports nothing heavy (no typer, no torch).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DvisError(Exception):
    """Root of every error dvis reports to a user. Exit code 1 (runtime error)."""

    exit_code: int = 1


class DvisUsageError(DvisError, ValueError):
    """The command line or the arguments of an API call are wrong. Exit code 2."""

    exit_code = 2


class UnknownModelError(DvisUsageError, LookupError):
    """A model name that is neither registered nor a path; suggests close matches."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        super().__init__(
            f"unknown model '{name}': not a registered name and no such file or directory."
            f"{hint} Known: {', '.join(known)}."
        )
        self.name = name


class InputNotFoundError(DvisUsageError, FileNotFoundError):
    """An input path does not exist."""

    def __init__(self, path: object, what: str = "input") -> None:
        super().__init__(f"{path}: {what} does not exist")


class OutputExistsError(DvisUsageError, FileExistsError):
    """An output exists and --overwrite was not given."""

    def __init__(self, path: object) -> None:
        super().__init__(f"{path}: output exists; pass --overwrite to replace it")


class CheckpointError(DvisError, ValueError):
    """A checkpoint file or directory cannot be read or does not fit the architecture."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class BackendUnavailableError(DvisError, RuntimeError):
    """An explicitly requested compute backend cannot run here."""


class MissingDependencyError(DvisError, ImportError):
    """An optional dependency is needed for what was asked; the message has the pip line."""

    def __init__(self, module: str, extra: str | None, purpose: str) -> None:
        pip = f"pip install 'dynamicvis-cli[{extra}]'" if extra else f"pip install {module}"
        super().__init__(f"{purpose} needs the Python module '{module}': {pip}")
        self.module = module


class RasterReadError(DvisError, OSError):
    """A file is not a readable raster, or reading part of it failed (truncated, corrupt)."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class VectorReadError(DvisUsageError, OSError):
    """A vector input (regions, labels) cannot be read or holds nothing usable."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class BandIndexError(DvisUsageError, IndexError):
    """A requested band (1-based) does not exist in the raster."""

    def __init__(self, path: object, bands: Iterable[int], count: int) -> None:
        bad = ", ".join(str(b) for b in bands)
        super().__init__(f"{path}: band(s) {bad} out of range; the raster has {count} band(s) (1-based)")


class NotGeoreferencedError(DvisUsageError):
    """A georeferenced output was asked of a raster without CRS or transform."""

    def __init__(self, path: object, output: object) -> None:
        super().__init__(
            f"{path}: raster has no CRS, so {output} cannot be georeferenced; "
            "pass --pixel-coords to write pixel coordinates instead"
        )


class GridMismatchError(DvisError, ValueError):
    """Two rasters that must share a grid do not. Exit code 3."""

    exit_code = 3

    def __init__(self, first: object, second: object, differences: Iterable[str]) -> None:
        super().__init__(
            f"{second}: not on the grid of {first} ({'; '.join(differences)}); "
            "pass --align to warp it onto the first grid"
        )


class SomeInputsFailedError(DvisError):
    """Some inputs of a batch failed; the others were written. Exit code 4."""

    exit_code = 4

    def __init__(self, failed: int, total: int) -> None:
        super().__init__(f"{failed} of {total} inputs failed (listed under 'failed' in the summary)")
        self.failed, self.total = failed, total


class ArchiveError(DvisError, ValueError):
    """A path is not a dvis archive, or the archive is corrupt, truncated, inconsistent or busy."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class DatasetError(DvisUsageError):
    """A training or evaluation dataset is missing, malformed or inconsistent; names the file."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
