"""What training attaches to the backbone without changing the task models.

* :class:`ProgressFeed`: the router's noise schedule needs the fraction of training done; the
  task models (torchvision's FCOS and Mask R-CNN among them) call the backbone without it, so a
  forward pre-hook passes ``progress=`` to every training-mode backbone call.
* :class:`TokenDrop` (experimental, ``--token-drop r``): in training, each token of each stage
  map handed to the heads is zeroed with probability ``r`` and the kept ones scaled by
  ``1 / (1 - r)`` (dropout over whole tokens, the "visual robustness" idea of ViTP). Off in eval.
* :class:`StageCapture`: keeps the last backbone output, for the auxiliary segmentation head.
* :func:`freeze_stages`: no gradient for the first ``n`` stages (and the positional embedding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ProgressFeed:
    """Passes ``progress`` (set :attr:`value`, 0..1) to the backbone in training mode."""

    def __init__(self, backbone: nn.Module) -> None:
        self.value = 0.0
        self.handle = backbone.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if module.training and kwargs.get("progress") is None:
            return args, {**kwargs, "progress": self.value}
        return None


class TokenDrop:
    """Drops a fraction ``rate`` of each stage map's tokens in training (see the module doc)."""

    def __init__(self, backbone: nn.Module, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"token drop rate {rate} must be in [0, 1)")
        self.rate = rate
        self.handle = backbone.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: list[Tensor]) -> list[Tensor] | None:
        if not module.training or self.rate == 0.0:
            return None
        keep = 1.0 - self.rate
        out = []
        for f in output:
            mask = (torch.rand(f.shape[0], 1, *f.shape[2:], device=f.device) < keep).to(f.dtype)
            out.append(f * mask / keep)
        return out


class StageCapture:
    """Remembers the backbone's latest list of stage maps (training only)."""

    def __init__(self, backbone: nn.Module) -> None:
        self.stages: list[Tensor] | None = None
        self.handle = backbone.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: list[Tensor]) -> None:
        self.stages = list(output) if module.training else None


def freeze_stages(backbone: nn.Module, n: int) -> list[str]:
    """Turn off gradients of stages ``0..n-1`` (and the positional embedding when ``n >= 1``).

    Returns the names of the frozen parameters.
    """
    frozen = []
    for name, p in backbone.named_parameters():
        stage = int(name.split(".")[1]) if name.startswith("layers.") else None
        if (stage is not None and stage < n) or (n >= 1 and name == "pos_embed"):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
