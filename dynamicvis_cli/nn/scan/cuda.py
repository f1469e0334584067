"""mamba_ssm's fused CUDA selective scan, imported only when used."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from dynamicvis_cli._deps import optional, require

_interface: Any = None
_checked = False


def available() -> bool:
    """Whether mamba_ssm's CUDA extension imports on this machine."""
    global _interface, _checked
    if not _checked:
        _interface = optional("mamba_ssm.ops.selective_scan_interface")
        _checked = True
    return _interface is not None


def selective_scan_mamba_ssm(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Same signature and result as :func:`selective_scan_reference`; CUDA tensors, with autograd."""
    if not available():
        require("mamba_ssm", extra="cuda", purpose="the CUDA scan backend 'mamba_ssm'")
    contiguous = [t.contiguous() if t is not None else None for t in (u, delta, B, C, z)]
    u, delta, B, C, z = contiguous
    out: Tensor = _interface.selective_scan_fn(
        u, delta, A.contiguous().float(), B, C,
        D.float() if D is not None else None, z,
        delta_bias.float() if delta_bias is not None else None, delta_softplus,
    )
    return out
