"""Load a task model (classify, segment, detect, instance, change) from a name or checkpoint.

Weights can come whole from a task checkpoint, or partly: a backbone checkpoint (for example an
imported authors' checkpoint) gives the trunk and the head starts random. Anything random must be
asked for (``random_weights=True``, the CLI's ``--random-weights``) and is reported, so results from
untrained weights are never mistaken for real ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dynamicvis_cli.checkpoints.config import ModelConfig
from dynamicvis_cli.checkpoints.load import build_model, load_state
from dynamicvis_cli.checkpoints.registry import resolve
from dynamicvis_cli.checkpoints.store import read_weights
from dynamicvis_cli.errors import CheckpointError, DvisUsageError
from dynamicvis_cli.nn.adapt import adapt_input_conv
from dynamicvis_cli.nn.tasks import TASKS, build_task_model

#: Tasks whose torchvision detector counts background as class 0, and where their trunk's
#: weights sit in the task model's state dict.
_BACKGROUND_TASKS = {"detect": "fcos.backbone.body.", "instance": "maskrcnn.backbone.body."}


@dataclasses.dataclass
class LoadedTaskModel:
    """A task model ready for inference, with its effective config and where its weights came from."""

    module: nn.Module
    config: ModelConfig
    weights: dict[str, str]
    name: str

    @property
    def random(self) -> bool:
        return "random" in self.weights.values()


def _adapt_stem(state: dict[str, torch.Tensor], prefix: str, in_chans: int,
                rgb_bands: Sequence[int] | None) -> None:
    key = f"{prefix}backbone.layers.0.0.projection.weight"
    if key in state and (state[key].shape[1] != in_chans or rgb_bands is not None):
        state[key] = adapt_input_conv(state[key], in_chans, rgb_bands=rgb_bands)


def load_task_model(
    model: str | os.PathLike[str],
    task: str,
    *,
    classes: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    in_chans: int | None = None,
    rgb_bands: Sequence[int] | None = None,
    token_budget: int | None = None,
    tile_size: int | None = None,
    scan_backend: str = "auto",
    random_weights: bool = False,
) -> LoadedTaskModel:
    """Build the ``task`` model for ``model`` and load what weights exist.

    Raises:
        DvisUsageError: the model is for another task, classes are missing or contradict the
            checkpoint, or part of the weights would be random without ``random_weights``.
    """
    if task not in TASKS:
        raise DvisUsageError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    config, location = resolve(model)
    full = config.task == task
    if config.task not in ("backbone", task):
        raise DvisUsageError(f"{model}: a '{config.task}' model cannot {task}; give a {task} or backbone model")
    if full:
        if classes and list(classes) != list(config.classes):
            raise DvisUsageError(
                f"{model}: classes {list(classes)} differ from the model's {config.classes}; "
                "retrain (finetune) to change classes"
            )
        names = list(config.classes)
    else:
        if not classes and task != "change":
            raise DvisUsageError(f"{model} has no {task} head: pass --classes to build one (random)")
        names = list(classes or [])
    if task == "change" and len(names) < 2:
        names = ["unchanged", *names] if names else ["unchanged", "changed"]
    weights = {
        "trunk": "checkpoint" if location is not None else "random",
        "head": "checkpoint" if (location is not None and full) else "random",
    }
    if "random" in weights.values() and not random_weights:
        part = "the whole model" if weights["trunk"] == "random" else f"the {task} head"
        raise DvisUsageError(
            f"{model}: {part} would have random weights; pass --random-weights to run it anyway "
            "(results are then meaningless except for testing)"
        )

    config = dataclasses.replace(config, task=task, classes=names)
    if token_budget is not None:
        config.token_budget = token_budget
    if tile_size is not None:
        config.tile_size = tile_size
    target = in_chans or config.backbone.in_chans
    config = config.with_bands(target)
    if task in ("detect", "instance", "change", "region") and not config.fpn_channels:
        config.fpn_channels = 256
    if task in ("classify", "segment"):
        config.fpn_channels = None  # their heads read the backbone's stages, not the FPN

    trunk = build_model(config, scan_backend=scan_backend)
    num = len(names) + 1 if task in _BACKGROUND_TASKS else len(names)  # FCOS, Mask R-CNN: + background
    net = build_task_model(task, trunk, num, tile_size=config.tile_size, head=config.head)
    if location is not None:
        state: dict[str, Any] = {k: v.float() if v.is_floating_point() else v
                                 for k, v in read_weights(location).items()}
        if full:
            prefix = _BACKGROUND_TASKS.get(task, "trunk.")
            _adapt_stem(state, prefix, target, rgb_bands)
            load_state(net, state, source=location)  # type: ignore[arg-type]
        else:
            _adapt_stem(state, "", target, rgb_bands)
            state = {k: v for k, v in state.items() if config.fpn_channels or not k.startswith("fpn.")}
            if "fpn.inner_blocks.0.0.weight" not in state and trunk.fpn is not None:
                raise CheckpointError(location, f"{task} needs an FPN and this checkpoint has none")
            load_state(trunk, state, source=location)
    net = net.to(device).eval()
    return LoadedTaskModel(net, config, weights, str(model))
