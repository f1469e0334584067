"""Reading and writing dvis checkpoints (safetensors + config.json); no pickles anywhere."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from dynamicvis_cli.checkpoints.config import CONFIG_NAME, METADATA_KEY, WEIGHTS_NAME, ModelConfig
from dynamicvis_cli.errors import CheckpointError
from dynamicvis_cli.geo.atomic import atomic_output


def _weights_file(path: Path) -> Path:
    return path / WEIGHTS_NAME if path.is_dir() else path


def read_config(path: Path) -> ModelConfig:
    """The config of a checkpoint folder (config.json) or single safetensors file (metadata)."""
    path = Path(path)
    if path.is_dir():
        cfg = path / CONFIG_NAME
        if not cfg.is_file():
            raise CheckpointError(path, f"not a dvis checkpoint folder: no {CONFIG_NAME}")
        return ModelConfig.from_file(cfg)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from exc
    if METADATA_KEY not in meta:
        raise CheckpointError(
            path, "safetensors file without a dvis config; if it holds the authors' weights, "
            "convert it first: dvis models import SRC -o DIR"
        )
    return ModelConfig.from_json(meta[METADATA_KEY], source=path)


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint folder or file."""
    file = _weights_file(Path(path))
    if not file.is_file():
        raise CheckpointError(path, f"weights file {file.name} is missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(file, f"weights cannot be read ({exc})") from exc


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 of a checkpoint's weights file (folder or single file)."""
    return sha256(_weights_file(Path(path)))


def save_checkpoint(
    state_dict: dict[str, Tensor],
    config: ModelConfig,
    out: Path,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint atomically: a folder (config.json + model.safetensors), or a single
    file when ``out`` ends in ``.safetensors`` (config in its metadata). ``dtype`` casts floats."""
    out = Path(out)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in state_dict.items()
    }
    text = config.to_json()
    if out.suffix == ".safetensors":
        with atomic_output(out, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
        return out
    with atomic_output(out, overwrite=overwrite, directory=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
    return out

