"""Backbone + FPN as one module: what ``load_model`` returns and every head builds on."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from dynamicvis_cli.nn.backbone import BackboneSpec, DynamicVisBackbone
from dynamicvis_cli.nn.fpn import FPN


class Features(NamedTuple):
    """Four backbone maps (strides 4–32) and, when the model has an FPN, five FPN maps (4–64)."""

    stages: list[Tensor]
    fpn: list[Tensor]


class DynamicVis(nn.Module):
    """DynamicVis backbone with an optional FPN. State-dict keys: ``backbone.*``, ``fpn.*``."""

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        fpn_channels: int | None = 256,
        token_budget: int | None = None,
        dense: bool = False,
        gumbel_schedule: str = "fixed",
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = DynamicVisBackbone(
            spec, token_budget=token_budget, dense=dense, gumbel_schedule=gumbel_schedule,
            scan_backend=scan_backend,
        )
        self.fpn = FPN(list(spec.dims), fpn_channels) if fpn_channels else None

    def forward(self, x: Tensor, *, progress: float | None = None) -> Features:
        """x: (batch, in_chans, H, W), normalised → :class:`Features`."""
        stages = self.backbone(x, progress=progress)
        return Features(stages, self.fpn(stages) if self.fpn is not None else [])
