"""Convert the authors' checkpoints (KyanChen/DynamicVis, mmengine) into dvis checkpoints.

Accepted sources: ``.pth``/``.pt``/``.ckpt``/``.bin`` read with ``torch.load(weights_only=True)``
(no pickle code runs), or ``.safetensors``. The dict may be wrapped in ``state_dict`` or
``model`` and its keys prefixed with ``module.``. Keys under ``backbone.`` keep their names; the
FPN comes from ``pre_neck.`` (their pretraining checkpoints) or, failing that, from a plain
``neck.`` FPN; mmdet's ``lateral_convs.{i}.conv`` / ``fpn_convs.{i}.conv`` become torchvision's
``inner_blocks.{i}.0`` / ``layer_blocks.{i}.0``. Anything else (heads, optimiser state) is
listed as ignored. The architecture is read off the shapes and checked key by key against the
model it describes; base and large are recognised by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dynamicvis_cli.checkpoints.config import ModelConfig
from dynamicvis_cli.checkpoints.registry import architectures
from dynamicvis_cli.checkpoints.store import save_checkpoint, sha256
from dynamicvis_cli.errors import CheckpointError, InputNotFoundError
from dynamicvis_cli.nn.backbone import BackboneSpec

TORCH_SUFFIXES = {".pth", ".pt", ".ckpt", ".bin"}
FPN_PREFIXES = ("pre_neck.", "neck.")
_FPN_KEY = re.compile(r"^(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.1\.(\d+)\.")


@dataclass
class Conversion:
    """The result of a conversion: config, dvis state dict, and what was left out."""

    config: ModelConfig
    state_dict: dict[str, Tensor]
    ignored: list[str] = field(default_factory=list)
    fpn_source: str | None = None


def read_source(path: Path) -> dict[str, Tensor]:
    """The flat tensor dict of a checkpoint file, unwrapped and without ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(path, "checkpoint")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(path, f"not a readable safetensors file ({exc})") from exc
    elif path.suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many types for corrupt or unsafe files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(path, f"cannot be read as a weights-only torch file: {first}") from exc
    else:
        raise CheckpointError(
            path, f"unknown checkpoint type '{path.suffix}'; expected .pth, .pt, .ckpt, .bin or .safetensors"
        )
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(path, "does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_spec(backbone: dict[str, Tensor], *, source: object) -> BackboneSpec:
    """Read a BackboneSpec off the authors' backbone tensors (keys without ``backbone.``)."""
    stems = sorted(int(m.group(1)) for k in backbone if (m := re.match(r"^layers\.(\d+)\.0\.projection\.weight$", k)))
    if stems != list(range(len(stems))) or not stems:
        raise CheckpointError(source, "no DynamicVis backbone found (layers.{i}.0.projection.weight)")
    dims, kernels, depths, divisors = [], [], [], []
    in_chans = backbone["layers.0.0.projection.weight"].shape[1]
    for i in stems:
        w = backbone[f"layers.{i}.0.projection.weight"]
        dims.append(int(w.shape[0]))
        kernels.append(int(w.shape[-1]))
        blocks = sorted({int(m.group(2)) for k in backbone if (m := _BLOCK_KEY.match(k)) and int(m.group(1)) == i})
        if blocks != list(range(len(blocks))):
            raise CheckpointError(source, f"stage {i} has non-contiguous blocks {blocks}")
        depths.append(len(blocks))
        routed = all(f"layers.{i}.1.{j}.spatial_gate.weight" in backbone for j in blocks)
        divisors.append((8, 4, 2, 1)[i] if routed and i < 4 else (1 if routed else 0))
    strides = (4, 2, 2, 2)[: len(dims)]
    pos = backbone.get("pos_embed")
    img_size = 512
    if pos is not None:
        side = int(pos.shape[1] ** 0.5)
        if side * side != pos.shape[1]:
            raise CheckpointError(source, f"pos_embed of {pos.shape[1]} tokens is not a square grid")
        img_size = side * strides[0]
    return BackboneSpec(
        dims=tuple(dims), depths=tuple(depths), keep_divisors=tuple(divisors),
        patch_sizes=tuple(kernels), strides=strides, img_size=img_size, in_chans=int(in_chans),
        pos_embed=pos is not None,
    )


def _fpn_state(sd: dict[str, Tensor], n_levels: int) -> tuple[str | None, dict[str, Tensor]]:
    for prefix in FPN_PREFIXES:
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not part:
            continue
        matches = {k: _FPN_KEY.match(k) for k in part}
        plain = all(matches.values()) and {int(m.group(2)) for m in matches.values() if m} == set(range(n_levels))
        if not plain:
            continue  # a downstream neck of another shape: not this FPN
        out = {}
        for k, m in matches.items():
            assert m is not None
            kind = "inner_blocks" if m.group(1) == "lateral_convs" else "layer_blocks"
            out[f"fpn.{kind}.{m.group(2)}.0.{m.group(3)}"] = part[k]
        return prefix, out
    return None, {}


def convert(sd: dict[str, Tensor], *, source: object = "checkpoint") -> Conversion:
    """Map the authors' keys to dvis keys and infer the config; checked against the model."""
    from dynamicvis_cli.checkpoints.load import build_model, load_state

    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if not backbone:
        raise CheckpointError(source, "no 'backbone.' keys: not a DynamicVis checkpoint")
    spec = infer_spec(backbone, source=source)
    fpn_prefix, fpn = _fpn_state(sd, len(spec.dims))
    fpn_channels = int(fpn["fpn.inner_blocks.0.0.weight"].shape[0]) if fpn else None
    state = {f"backbone.{k}": v.float() if v.is_floating_point() else v for k, v in backbone.items()}
    state.update({k: v.float() for k, v in fpn.items()})
    used = {f"backbone.{k}" for k in backbone} | {k for k in sd if fpn_prefix and k.startswith(fpn_prefix)}
    ignored = sorted(k for k in sd if k not in used)

    arch = "custom"
    for name, a in architectures().items():
        if (a.spec.dims, a.spec.depths) == (spec.dims, spec.depths):
            arch = name
    config = ModelConfig(arch=arch, backbone=spec, fpn_channels=fpn_channels, tile_size=spec.img_size)
    load_state(build_model(config), state, source=source)  # every key mapped, every shape checked
    return Conversion(config, state, ignored, fpn_prefix)


def import_checkpoint(
    src: Path, out: Path, *, overwrite: bool = False, fp16: bool = False, name: str | None = None
) -> dict[str, Any]:
    """Convert ``src`` and write a dvis checkpoint to ``out``; returns a JSON-able summary."""
    src = Path(src)
    conv = convert(read_source(src), source=src)
    conv.config.provenance = {
        "source": src.name,
        "source_sha256": sha256(src),
        "converted_by": "dvis models import",
        "origin": "KyanChen/DynamicVis (authors' release); check its licence before redistributing",
    }
    if name:
        conv.config.provenance["name"] = name
    save_checkpoint(conv.state_dict, conv.config, Path(out), overwrite=overwrite,
                    dtype=torch.float16 if fp16 else None)
    n_params = sum(v.numel() for k, v in conv.state_dict.items() if k.startswith("backbone."))
    return {
        "source": str(src),
        "output": str(out),
        "arch": conv.config.arch,
        "backbone": conv.config.backbone.to_dict(),
        "fpn_channels": conv.config.fpn_channels,
        "fpn_from": conv.fpn_source,
        "backbone_parameters": n_params,
        "ignored_keys": len(conv.ignored),
        "ignored_examples": conv.ignored[:10],
    }
