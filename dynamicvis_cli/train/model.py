"""The model a fine-tuning run starts from: a task checkpoint, a backbone checkpoint or an
architecture (random weights, reported), with the run's classes, bands and normalisation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from dynamicvis_cli.checkpoints.config import ModelConfig
from dynamicvis_cli.checkpoints.load import build_model, load_state
from dynamicvis_cli.checkpoints.registry import architectures, resolve
from dynamicvis_cli.checkpoints.store import read_weights
from dynamicvis_cli.checkpoints.task import _BACKGROUND_TASKS, load_task_model
from dynamicvis_cli.nn.adapt import adapt_input_conv
from dynamicvis_cli.nn.tasks import build_task_model


def _trunk_prefix(task: str) -> str:
    return _BACKGROUND_TASKS.get(task, "trunk.")


def build_for_training(model: str, task: str, classes: Sequence[str], *, in_chans: int, tile_size: int,
                       scan_backend: str = "auto") -> tuple[nn.Module, ModelConfig, dict[str, str]]:
    """(task model, its config, where weights came from: ``{"trunk": ..., "head": ...}``).

    * a checkpoint of this task with these classes: everything is loaded (training continues);
    * a checkpoint of another task, or of this task with other classes: its trunk is loaded and
      the head starts random (and the FPN, when the checkpoint has none: classify, segment);
    * a backbone checkpoint: the trunk is loaded, the head starts random;
    * an architecture name: everything starts random (training from scratch).
    """
    config, location = resolve(model)
    if location is None or config.task in ("backbone", task) and (
            config.task == "backbone" or list(config.classes) == list(classes)):
        loaded = load_task_model(model, task, classes=list(classes), in_chans=in_chans, tile_size=tile_size,
                                 scan_backend=scan_backend, random_weights=True)
        return loaded.module, loaded.config, loaded.weights
    # another task's (or other classes') checkpoint: keep its trunk only
    source_prefix = _trunk_prefix(config.task) if config.task != "backbone" else ""
    state = {k[len(source_prefix):]: v.float() if v.is_floating_point() else v
             for k, v in read_weights(location).items() if k.startswith(source_prefix)}
    new = dataclasses.replace(config, task=task, classes=list(classes), tile_size=tile_size)
    new = new.with_bands(in_chans)
    if task in ("detect", "instance", "change", "region") and not new.fpn_channels:
        arch = architectures().get(new.arch)
        new.fpn_channels = arch.fpn_channels if arch is not None else 256
    if task in ("classify", "segment"):
        new.fpn_channels = None
    has_fpn = "fpn.inner_blocks.0.0.weight" in state
    state = {k: v for k, v in state.items() if new.fpn_channels or not k.startswith("fpn.")}
    key = "backbone.layers.0.0.projection.weight"
    if key in state and state[key].shape[1] != in_chans:
        state[key] = adapt_input_conv(state[key], in_chans)
    trunk = build_model(new, scan_backend=scan_backend)
    weights = {"trunk": "checkpoint", "head": "random"}
    if trunk.fpn is not None and not has_fpn:
        # e.g. a classification checkpoint (no FPN) starting a detector: backbone only
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        load_state(trunk.backbone, backbone, source=location)  # type: ignore[arg-type]
        weights["fpn"] = "random"
    else:
        load_state(trunk, state, source=location)
    num = len(classes) + 1 if task in _BACKGROUND_TASKS else len(classes)
    head: dict[str, Any] = dict(new.head)
    net = build_task_model(task, trunk, num, tile_size=tile_size, head=head)
    return net, new, weights


def band_names(config: ModelConfig, bands: Sequence[int]) -> list[str]:
    """Names of the bands read: the model's own when they are the bands it reads by default (its
    recorded ``band_indexes``, else its first bands), else bandN."""
    if len(config.bands) == len(bands) and [int(b) for b in bands] == config.default_bands():
        return list(config.bands)
    return [f"band{b}" for b in bands]


def export_config(config: ModelConfig, *, classes: Sequence[str], bands: Sequence[int], mean: Sequence[float],
                  std: Sequence[float], tile_size: int, gumbel_schedule: str,
                  provenance: dict[str, Any]) -> ModelConfig:
    """The config written beside the fine-tuned weights (what inference reads back): the band
    indexes trained on are recorded, so inference reads them when it is given no ``--bands``."""
    return dataclasses.replace(
        config, classes=list(classes), bands=band_names(config, bands), band_indexes=[int(b) for b in bands],
        mean=[float(m) for m in mean],
        std=[float(s) for s in std], tile_size=int(tile_size), gumbel_schedule=gumbel_schedule,
        provenance={**config.provenance, **provenance},
    )


def trunk_of(net: nn.Module) -> Any:
    return net.trunk  # every task model exposes its DynamicVis trunk


__all__ = ["band_names", "build_for_training", "export_config", "trunk_of"]
