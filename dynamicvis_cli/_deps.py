"""Optional dependencies, imported where used, with the install line when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from dynamicvis_cli.errors import MissingDependencyError


def optional(module: str) -> ModuleType | None:
    """Import ``module`` or return None when it (or one of its native parts) fails to import."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError):
        return None


def require(module: str, *, extra: str | None, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip line."""
    mod = optional(module)
    if mod is None:
        raise MissingDependencyError(module, extra, purpose)
    return mod
