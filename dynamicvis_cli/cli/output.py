"""Where the CLI writes: logs and progress to stderr, one JSON summary to stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)


def emit(summary: dict[str, Any], *, stderr: bool = False) -> None:
    """Print the run's JSON summary (one object, one line) on stdout, or on stderr when stdout
    carries the results themselves (``-o -``)."""
    stream = sys.stderr if stderr else sys.stdout
    stream.write(json.dumps(summary, default=str) + "\n")
    stream.flush()
