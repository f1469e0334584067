"""Outputs appear complete or not at all: write under a temporary name, rename when done.

Used by every writer (rasters, vectors, checkpoints, indexes). A run that fails or is killed
leaves at most a hidden ``.NAME.tmp-…`` next to the output, never a partial NAME; existing outputs
are replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dynamicvis_cli.errors import OutputExistsError


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is False."""
    if path.exists() and not overwrite:
        raise OutputExistsError(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path, *, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the output's folder; on success move it onto ``path``.

    Args:
        path: the final output (file or, with ``directory=True``, a folder).
        overwrite: replace an existing output.
        directory: the temporary path is created as an empty folder.
    """
    path = Path(path)
    check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            check_writable(path, overwrite=overwrite)  # appeared meanwhile
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
