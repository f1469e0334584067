"""``dvis --show-versions``: versions of dvis and what it runs on, for bug reports."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = (
    "dynamicvis-cli", "torch", "torchvision", "numba", "mamba-ssm", "rasterio", "geopandas",
    "shapely", "pyproj", "faiss-gpu", "faiss-cpu", "safetensors", "typer", "numpy",
)


def versions_text() -> str:
    lines = [f"python: {platform.python_version()} ({platform.machine()}, {platform.system()})"]
    for name in PACKAGES:
        try:
            lines.append(f"{name}: {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name}: not installed")
    return "\n".join(lines)
