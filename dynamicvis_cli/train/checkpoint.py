"""Training checkpoints: an inference-ready dvis checkpoint plus the optimiser's state, no pickles.

``OUT/checkpoints/step-0000100/`` holds ``config.json`` + ``model.safetensors`` (what every
inference command reads), ``optimizer.safetensors`` (AdamW's moments, flattened as
``state.<param>.<name>``), ``aux.safetensors`` (training-only heads, when any) and
``trainer.json`` (step, optimiser hyper-parameters and scalars, AMP scaler, the training
config). Folders appear whole (temporary name, then rename). Random state is not stored: each
optimiser step reseeds from (seed, step, rank), so a resumed run draws the same numbers.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from dynamicvis_cli.checkpoints.config import CONFIG_NAME, WEIGHTS_NAME, ModelConfig
from dynamicvis_cli.errors import CheckpointError
from dynamicvis_cli.geo.atomic import atomic_output

CHECKPOINTS = "checkpoints"
TRAINER = "trainer.json"
OPTIMIZER = "optimizer.safetensors"
AUX = "aux.safetensors"
_STEP = re.compile(r"^step-(\d+)$")


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def write_model(folder: Path, state: dict[str, Tensor], config: ModelConfig) -> None:
    """config.json + model.safetensors into an existing (temporary) folder."""
    save_file(_contiguous(state), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(config.to_json() + "\n", encoding="utf-8")


def save_final(out: Path, state: dict[str, Tensor], config: ModelConfig) -> None:
    """The run folder's own model (weights first, config last: config.json marks it complete)."""
    with atomic_output(out / WEIGHTS_NAME, overwrite=True) as tmp:
        save_file(_contiguous(state), str(tmp), metadata={"format": "pt"})
    with atomic_output(out / CONFIG_NAME, overwrite=True) as tmp:
        tmp.write_text(config.to_json() + "\n", encoding="utf-8")


def _split_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in opt_state["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in opt_state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_training(out: Path, step: int, *, model_state: dict[str, Tensor], config: ModelConfig,
                  optimizer: torch.optim.Optimizer, aux_state: dict[str, Tensor] | None,
                  trainer: dict[str, Any], keep: int) -> Path:
    """Write ``OUT/checkpoints/step-NNNNNNN`` atomically and prune all but the newest ``keep``."""
    folder = out / CHECKPOINTS / f"step-{step:07d}"
    tensors, meta = _split_optimizer(optimizer.state_dict())
    with atomic_output(folder, overwrite=True, directory=True) as tmp:
        write_model(tmp, model_state, config)
        save_file(_contiguous(tensors), str(tmp / OPTIMIZER))
        if aux_state:
            save_file(_contiguous(aux_state), str(tmp / AUX))
        (tmp / TRAINER).write_text(json.dumps({**trainer, "step": step, "optimizer": meta}, indent=1,
                                              default=str) + "\n", encoding="utf-8")
    if keep > 0:
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders under ``out``, oldest first."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP.match(p.name)) and (p / TRAINER).is_file() and (p / WEIGHTS_NAME).is_file()]
    return [p for _, p in sorted(found)]


def find_resume(out: Path, resume: Any) -> Path | None:
    """The checkpoint folder ``resume`` names: True → the newest in ``out`` (None if none)."""
    if resume in (False, None, "", "false"):
        return None
    if resume is True or str(resume).lower() in ("true", "latest", "auto"):
        found = list_checkpoints(out)
        return found[-1] if found else None
    path = Path(str(resume))
    if not (path / TRAINER).is_file():
        raise CheckpointError(path, f"not a training checkpoint (no {TRAINER}); give a folder "
                              f"{out / CHECKPOINTS}/step-NNNNNNN or --resume alone for the newest")
    return path


def load_training(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Tensor] | None,
                                          dict[str, Any]]:
    """(model state, optimizer state dict, aux state or None, trainer.json) of a checkpoint."""
    try:
        trainer = json.loads((folder / TRAINER).read_text(encoding="utf-8"))
        model = load_file(str(folder / WEIGHTS_NAME))
        opt_tensors = load_file(str(folder / OPTIMIZER)) if (folder / OPTIMIZER).is_file() else {}
        aux = load_file(str(folder / AUX)) if (folder / AUX).is_file() else None
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(folder, f"training checkpoint cannot be read ({exc})") from exc
    return model, _join_optimizer(opt_tensors, trainer["optimizer"]), aux, trainer


def restore_training(folder: Path, *, model: Any, aux: Any, optimizer: torch.optim.Optimizer,
                     scaler: Any) -> int:
    """Load a training checkpoint into the run's model, training-only module (``aux``, may be
    None), optimiser and fp16 scaler (may be None); returns the step it was taken at."""
    state, opt_state, aux_state, trainer = load_training(folder)
    model.load_state_dict(state, strict=True)
    if aux is not None and aux_state is not None:
        aux.load_state_dict(aux_state, strict=True)
    optimizer.load_state_dict(opt_state)
    if scaler is not None and trainer.get("scaler"):
        scaler.load_state_dict(trainer["scaler"])
    return int(trainer["step"])
