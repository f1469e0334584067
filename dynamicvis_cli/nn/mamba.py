"""Mamba v1 mixer with mamba_ssm's parameter names, and the bidirectional wrapper STIM uses.

Parameter names (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``)
are those of mamba_ssm and of the authors' checkpoints, so weights map one-to-one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamicvis_cli.nn.scan import selective_scan


def _wide(t: Tensor) -> Tensor:
    """The scan's parameters at float32, or float64 for a float64 model (never narrower)."""
    return t if t.dtype == torch.float64 else t.float()


class RMSNorm(nn.Module):
    """``v · weight / sqrt(mean_c(v²) + eps)``, computed in float32 or wider, cast back."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        v = x.to(torch.float64 if dtype == torch.float64 else torch.float32)
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * v.to(dtype)


class Mamba(nn.Module):
    """Mamba v1 block: in_proj → causal depthwise conv → SiLU → x_proj → Δ, B, C → scan → gate → out_proj.

    ``forward`` takes (batch, L, d_model). ``forward_bidirectional`` runs the sequence and its
    reverse through the same weights in one batched pass (see :class:`BiMamba`).
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        # Plain nn.Linear init for dt_proj, as in the authors' code (no Mamba dt-bias init).
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _ssm(self, h: Tensor) -> Tensor:
        """(batch, d_inner, L) conv input → (batch, d_inner, L) scan output with the D skip.

        Projections are written as ``W @ h`` on the channel-first layout, so Δ, B and C come
        out in the (batch, channels, L) layout the scan reads, without transposed copies.
        """
        length = h.shape[-1]
        h = F.silu(self.conv1d(h)[..., :length])
        x_dbl = torch.matmul(self.x_proj.weight, h)                           # (b, r + 2n, L)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = torch.matmul(self.dt_proj.weight, dt)                           # (b, d_inner, L)
        A = -torch.exp(_wide(self.A_log))
        return selective_scan(
            h, delta, A, B, C, _wide(self.D),
            delta_bias=_wide(self.dt_proj.bias), delta_softplus=True, backend=self.scan_backend,
        )

    def forward(self, x: Tensor) -> Tensor:
        h, z = self.in_proj(x).chunk(2, dim=-1)
        y = self._ssm(h.transpose(1, 2)).transpose(1, 2)
        return self.out_proj(y * F.silu(z))

    def forward_bidirectional(self, x: Tensor) -> Tensor:
        """``(forward(x) + flip(forward(flip(x)))) / 2``, sharing the token-wise work.

        in_proj, the gate and out_proj act on each token alone (and out_proj has no bias), so
        they commute with reversing the sequence: they run once, and only the causal parts
        (conv, scan) run on both directions, stacked along the batch.
        """
        batch = x.shape[0]
        h, z = self.in_proj(x).chunk(2, dim=-1)
        h = h.transpose(1, 2)                                                   # (b, d_inner, L)
        y = self._ssm(torch.cat([h, h.flip(-1)], dim=0))
        y = (y[:batch] + y[batch:].flip(-1)).transpose(1, 2) * 0.5
        return self.out_proj(y * F.silu(z))


class BiMamba(nn.Module):
    """One RMSNorm and one Mamba run on the sequence and on its reverse; mean of both, plus residual.

    Named as in the authors' checkpoints: ``pre_norm`` and ``mamba_layer``. RMSNorm is per token,
    so norming then reversing equals reversing then norming.
    """

    def __init__(self, d_model: int, *, scan_backend: str = "auto") -> None:
        super().__init__()
        self.pre_norm = RMSNorm(d_model, eps=1e-5)
        self.mamba_layer = Mamba(d_model, scan_backend=scan_backend)

    def forward(self, s: Tensor) -> Tensor:
        return s + self.mamba_layer.forward_bidirectional(self.pre_norm(s))
