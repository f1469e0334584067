"""Model names → configs. Data only: no nn code lives here.

A name is an architecture (``base``, ``large``, ``small``, ``tiny``: random weights, for
building and training) or a released model ``arch.tag`` (a folder with config.json and weights
under one of :func:`model_dirs`). Anything else that exists on disk is a checkpoint path.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from dynamicvis_cli.checkpoints.config import CONFIG_NAME, ModelConfig
from dynamicvis_cli.checkpoints.defaults import COMMAND_DEFAULTS
from dynamicvis_cli.errors import UnknownModelError
from dynamicvis_cli.nn.backbone import BackboneSpec


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its spec, FPN width and a one-line description."""

    name: str
    spec: BackboneSpec
    fpn_channels: int
    description: str
    tile_size: int
    head_channels: int = 256  # width of the dense heads (UperNet, change decoder)


_ARCHS: dict[str, Architecture] = {}


def register_arch(arch: Architecture) -> Architecture:
    """File an architecture under its name; a duplicate name raises."""
    if arch.name in _ARCHS:
        raise ValueError(f"architecture '{arch.name}' is already registered")
    _ARCHS[arch.name] = arch
    return arch


register_arch(Architecture(
    "base",
    BackboneSpec(dims=(96, 192, 384, 768), depths=(2, 4, 16, 4), img_size=512),
    256, "DynamicVis-B, the paper's Table 1 (36.75M backbone parameters at 512 px)", 512,
))
register_arch(Architecture(
    "large",
    BackboneSpec(dims=(128, 256, 512, 1024), depths=(2, 4, 32, 4), img_size=512),
    256, "DynamicVis-L, the paper's Table 1 (91.24M backbone parameters at 512 px)", 512,
))
register_arch(Architecture(
    "small",
    BackboneSpec(dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), img_size=512),
    256, "dvis's own small variant for CPU training (not in the paper)", 512,
    head_channels=128,
))
register_arch(Architecture(
    "tiny",
    BackboneSpec(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), img_size=128),
    32, "dvis's own test-size variant, the reference fixture's shape (not in the paper)", 128,
    head_channels=32,
))


def architectures() -> dict[str, Architecture]:
    """All registered architectures by name."""
    return dict(_ARCHS)


def model_dirs() -> list[Path]:
    """Folders searched for released models: $DVIS_MODEL_PATH entries, then the project's models/."""
    dirs = [Path(p) for p in os.environ.get("DVIS_MODEL_PATH", "").split(os.pathsep) if p]
    bundled = Path(__file__).resolve().parents[2] / "models"
    if bundled.is_dir():
        dirs.append(bundled)
    return dirs


def released_models() -> dict[str, Path]:
    """Released models ``arch.tag`` → their folder (first found wins)."""
    found: dict[str, Path] = {}
    for root in model_dirs():
        if not root.is_dir():
            continue
        for cfg in sorted(root.glob(f"*/{CONFIG_NAME}")):
            found.setdefault(cfg.parent.name, cfg.parent)
    return found


def default_model(command: str) -> str:
    """The model ``command`` runs without ``--model``: its released default where that is
    installed (``models/`` or ``$DVIS_MODEL_PATH``), else the ``base`` architecture (which then
    needs trained weights or ``--random-weights``)."""
    name = COMMAND_DEFAULTS.get(command)
    return name if name is not None and name in released_models() else "base"


def list_models(pattern: str = "*") -> list[str]:
    """Names matching an fnmatch ``pattern``: architectures, then released models."""
    names = list(_ARCHS) + sorted(released_models())
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def arch_config(name: str) -> ModelConfig:
    """The config of a registered architecture (no weights)."""
    arch = _ARCHS[name]
    return ModelConfig(
        arch=name, backbone=arch.spec, fpn_channels=arch.fpn_channels, tile_size=arch.tile_size,
        head={"channels": arch.head_channels},
        provenance={"weights": "random initialisation", "architecture": arch.description},
    )


def resolve(model: str | os.PathLike[str]) -> tuple[ModelConfig, Path | None]:
    """A name or path → (config, checkpoint location or None for an architecture).

    Raises :class:`UnknownModelError` (with close matches) for anything else.
    """
    from dynamicvis_cli.checkpoints.store import read_config

    path = Path(model)
    if path.exists():
        return read_config(path), path
    name = str(model)
    released = released_models()
    if name in released:
        return read_config(released[name]), released[name]
    if name in _ARCHS:
        return arch_config(name), None
    raise UnknownModelError(name, list(_ARCHS) + list(released))
