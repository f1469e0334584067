"""Where the CLI writes: logs and progress to stderr, one JSON summary to stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)


def emit(summary: dict[str, Any]) -> None:
    """Print the run's JSON summary on stdout (one object, one line)."""
    sys.stdout.write(json.dumps(summary, default=str) + "\n")
    sys.stdout.flush()
