"""The DynamicVis backbone: four stages of patch merger → STIM units → LayerNorm.

State-dict keys follow the authors' released code exactly (without their ``backbone.`` prefix):
``pos_embed``, ``layers.{i}.0`` (patch merger: ``projection`` conv + ``norm``),
``layers.{i}.1.{j}`` (STIM units) and ``layers.{i}.2`` (stage-final LayerNorm).

Beyond the authors' code (which runs only at the size it was built for):

* any input size: the positional embedding, learned for the build size's square grid, is
  resized at run time to the actual stage-0 grid (bicubic, align_corners=False, in float32 —
  the authors' load-time resize, applied per input), and the number of global tokens of each
  stage is the number of rows of that stage's actual grid (at the build size this is the
  authors' rule; at another size it is what their code computes when built for that size);
* ``token_budget`` caps the tokens a unit selects, bounding compute and memory on huge inputs;
* ``dense=True`` disables routing (every token scanned in order: the paper's dense variant);
* router Gumbel noise in training follows ``gumbel_schedule`` with progress passed to forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamicvis_cli.nn.stim import STIM, gumbel_sigma


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture of a DynamicVis backbone (what the weights' shapes depend on)."""

    dims: tuple[int, ...]
    depths: tuple[int, ...]
    keep_divisors: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    img_size: int = 512
    in_chans: int = 3
    softmax_on_x: bool = True
    global_tokens: bool = True
    pos_embed: bool = True

    def __post_init__(self) -> None:
        n = len(self.dims)
        for name in ("depths", "keep_divisors", "patch_sizes", "strides"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"backbone spec: {name} has {len(getattr(self, name))} entries, dims {n}")

    @property
    def reductions(self) -> tuple[int, ...]:
        """Cumulative stride of each stage's output (4, 8, 16, 32)."""
        out, r = [], 1
        for s in self.strides:
            r *= s
            out.append(r)
        return tuple(out)

    def grid(self, size: int, stage: int = 0) -> int:
        """Side of a stage's token grid for an input side ``size`` (conv arithmetic)."""
        for i in range(stage + 1):
            k, s = self.patch_sizes[i], self.strides[i]
            size = (size + 2 * (k // 2) - k) // s + 1
        return size

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown backbone fields: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class PatchMerger(nn.Module):
    """Conv2d(k, stride s, padding k//2) then LayerNorm(eps 1e-6) over channels; returns tokens."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_chans, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.projection(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


def resize_pos_embed(pos_embed: Tensor, height: int, width: int) -> Tensor:
    """Resize a (1, L, C) square-grid embedding to (1, height·width, C), bicubic in float32.

    The source grid side is int(sqrt(L)), as in the authors' loader; align_corners=False.
    """
    _, length, dim = pos_embed.shape
    side = int(length**0.5)
    if side * side != length:
        raise ValueError(f"positional embedding of {length} tokens is not a square grid")
    if (side, side) == (height, width):
        return pos_embed
    grid = pos_embed.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(pos_embed.dtype)


class DynamicVisBackbone(nn.Module):
    """Four-stage DynamicVis backbone returning the stage maps (strides 4, 8, 16, 32)."""

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        token_budget: int | None = None,
        dense: bool = False,
        gumbel_schedule: str = "fixed",
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.token_budget = token_budget
        self.dense = dense
        self.gumbel_schedule = gumbel_schedule
        gumbel_sigma(gumbel_schedule, 0.0)  # validate the name early
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"layers.{i}"}
            for i, (c, r) in enumerate(zip(spec.dims, spec.reductions))
        ]
        if spec.pos_embed:
            side = spec.grid(spec.img_size, 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, side * side, spec.dims[0]))
        layers = []
        in_chans = spec.in_chans
        for i, dim in enumerate(spec.dims):
            blocks = nn.ModuleList(
                STIM(dim, keep_divisor=spec.keep_divisors[i], softmax_on_x=spec.softmax_on_x,
                     scan_backend=scan_backend)
                for _ in range(spec.depths[i])
            )
            merger = PatchMerger(in_chans, dim, spec.patch_sizes[i], spec.strides[i])
            layers.append(nn.ModuleList([merger, blocks, nn.LayerNorm(dim, eps=1e-6)]))
            in_chans = dim
        self.layers = nn.ModuleList(layers)
        self._init_weights()

    def _init_weights(self) -> None:
        # The authors' init_cfg: Kaiming (fan_in, linear) for every Conv2d; others keep defaults.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_scan_backend(self, backend: str) -> None:
        """Choose the selective-scan backend of every unit ("auto", "chunked", ...)."""
        for m in self.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = backend

    def forward(
        self,
        x: Tensor,
        *,
        progress: float | None = None,
        record: list[dict[str, Tensor]] | None = None,
    ) -> list[Tensor]:
        """Args:
            x: (batch, in_chans, H, W) normalised image; any H, W.
            progress: fraction of training done (0..1), for the "decay" router-noise schedule.
            record: if a list, each routing unit appends its logits and selected indices.

        Returns:
            four maps (batch, dims[i], H_i, W_i), H_0 = ceil(H/4) for the default mergers.
        """
        sigma = gumbel_sigma(self.gumbel_schedule, progress) if self.training else 0.0
        outs = []
        for i, (merger, blocks, norm) in enumerate(self.layers):
            tokens, h, w = merger(x)
            if i == 0 and self.spec.pos_embed:
                tokens = tokens + resize_pos_embed(self.pos_embed, h, w)
            n_global = h if self.spec.global_tokens else 0
            for block in blocks:
                tokens = block(
                    tokens, n_global=n_global, token_budget=self.token_budget, gumbel=sigma,
                    dense=self.dense, record=record,
                )
            x = norm(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            outs.append(x)
        return outs
