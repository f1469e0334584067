"""dvis: the DynamicVis remote-sensing foundation model as shell commands and a Python API.

``import dynamicvis_cli`` loads no torch; ``load_model`` and ``list_models`` are resolved lazily.
"""

from __future__ import annotations

from typing import Any

from dynamicvis_cli._version import __version__
from dynamicvis_cli.errors import DvisError

__all__ = ["DvisError", "__version__", "list_models", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from dynamicvis_cli.checkpoints.load import load_model

        return load_model
    if name == "list_models":
        from dynamicvis_cli.checkpoints.registry import list_models

        return list_models
    raise AttributeError(f"module 'dynamicvis_cli' has no attribute {name!r}")
