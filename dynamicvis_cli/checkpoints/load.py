"""Build a model from a config, and load a named or saved model with its weights.

Overrides follow timm's rule: an argument left as None keeps the model's own value, so a CLI
flag the user did not set never changes the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from dynamicvis_cli.checkpoints.config import ModelConfig
from dynamicvis_cli.checkpoints.registry import resolve
from dynamicvis_cli.checkpoints.store import read_weights
from dynamicvis_cli.errors import CheckpointError, DvisUsageError
from dynamicvis_cli.nn.adapt import adapt_input_conv
from dynamicvis_cli.nn.model import DynamicVis

log = logging.getLogger(__name__)

STEM_KEY = "backbone.layers.0.0.projection.weight"


def build_model(config: ModelConfig, *, scan_backend: str = "auto") -> DynamicVis:
    """A randomly initialised model for ``config``."""
    return DynamicVis(
        config.backbone, fpn_channels=config.fpn_channels, token_budget=config.token_budget,
        dense=config.dense, gumbel_schedule=config.gumbel_schedule, scan_backend=scan_backend,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_state(model: DynamicVis, state: dict[str, Tensor], *, source: object) -> None:
    """Load ``state`` strictly, naming every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" … (+{len(keys) - 5})" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {label} key(s): {shown}")
    if problems:
        raise CheckpointError(source, "weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def load_model(
    model: str | os.PathLike[str] = "base",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    in_chans: int | None = None,
    rgb_bands: Sequence[int] | None = None,
    token_budget: int | None = None,
    dense: bool | None = None,
    with_fpn: bool = True,
    scan_backend: str = "auto",
    random_weights: bool = False,
    eval_mode: bool = True,
) -> DynamicVis:
    """Load a dvis model by name (``base``, ``base.tag``) or checkpoint path.

    Args:
        model: a registered name or a checkpoint folder/file.
        device: where to put the model.
        dtype: parameter dtype (float32 default; float64 for exactness checks).
        in_chans: number of input bands; RGB stem weights are adapted (see
            :func:`~dynamicvis_cli.nn.adapt.adapt_input_conv`) when it differs.
        rgb_bands: 0-based positions of R, G, B among the bands, for that adaptation.
        token_budget: cap on tokens selected per unit (None keeps the model's value).
        dense: disable routing, the paper's dense variant (None keeps the model's value).
        with_fpn: keep the FPN (False drops it and returns only stage maps).
        scan_backend: ``auto``, ``reference``, ``chunked``, ``numba`` or ``mamba_ssm``.
        random_weights: allow an architecture name without weights (random initialisation).
        eval_mode: put the model in evaluation mode.

    Returns:
        a :class:`~dynamicvis_cli.nn.model.DynamicVis`; ``model(x)`` gives ``Features(stages, fpn)``
        with 4 stage maps (strides 4–32) and 5 FPN maps (strides 4–64). ``model.config`` holds the
        effective :class:`ModelConfig`.
    """
    config, location = resolve(model)
    if location is None and not random_weights:
        raise DvisUsageError(
            f"'{model}' is an architecture without trained weights; pass random_weights=True "
            "(CLI: --random-weights) to use it randomly initialised, or give a checkpoint"
        )
    config = dataclasses.replace(config)
    if token_budget is not None:
        config.token_budget = token_budget
    if dense is not None:
        config.dense = dense
    if not with_fpn:
        config.fpn_channels = None
    source_chans = config.backbone.in_chans
    target_chans = in_chans or source_chans
    config = config.with_bands(target_chans)

    net = build_model(config, scan_backend=scan_backend)
    if location is not None:
        state = read_weights(location)
        if not with_fpn:
            state = {k: v for k, v in state.items() if not k.startswith("fpn.")}
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        if target_chans != source_chans or rgb_bands is not None:
            if STEM_KEY not in state:
                raise CheckpointError(location, f"no {STEM_KEY} to adapt to {target_chans} bands")
            state[STEM_KEY] = adapt_input_conv(state[STEM_KEY], target_chans, rgb_bands=rgb_bands)
            log.info("adapted the RGB stem of %s to %d bands", location, target_chans)
            config.provenance = {**config.provenance, "input_adapted_from_bands": source_chans}  # also for rgb_bands
        load_state(net, state, source=location)
    net.config = config  # type: ignore[assignment]
    net = net.to(device=device, dtype=dtype)
    return net.eval() if eval_mode else net.train()
