"""Selective scan behind one function, with backends chosen per call.

Backends (all share :func:`selective_scan_reference`'s signature and result):

==============  ==========================================================================
``reference``   a loop over time: the readable specification (slow, any device, autograd)
``chunked``     pure PyTorch, vectorised over time in chunks (any device, autograd)
``numba``       a fused CPU kernel (CPU tensors, no autograd): the fastest CPU path measured
``mamba_ssm``   mamba_ssm's fused CUDA kernel (CUDA tensors, autograd)
==============  ==========================================================================

``backend="auto"`` picks, in order: ``mamba_ssm`` for CUDA tensors when it imports; ``numba`` for
CPU tensors when no gradient is needed and numba imports; otherwise ``chunked``. The CPU choice
follows benchmarks/scan.py (docs/benchmarks.md): on a 2-core CPU the fused kernel is several
times faster than the chunked torch path at every length the backbone uses. An explicit backend
is never second-guessed: if it cannot run, :class:`BackendUnavailableError` says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dynamicvis_cli.errors import BackendUnavailableError
from dynamicvis_cli.nn.scan import cpu, cuda
from dynamicvis_cli.nn.scan.chunked import selective_scan_chunked
from dynamicvis_cli.nn.scan.reference import selective_scan_reference

BACKENDS: dict[str, Callable[..., Tensor]] = {
    "reference": selective_scan_reference,
    "chunked": selective_scan_chunked,
    "numba": cpu.selective_scan_numba,
    "mamba_ssm": cuda.selective_scan_mamba_ssm,
}
BACKEND_NAMES = ("auto", *BACKENDS)


def resolve_backend(backend: str, *, device: torch.device, needs_grad: bool) -> str:
    """The backend that will run for tensors on ``device``; raises if an explicit one cannot."""
    if backend == "auto":
        if device.type == "cuda" and cuda.available():
            return "mamba_ssm"
        if device.type == "cpu" and not needs_grad and cpu.available():
            return "numba"
        return "chunked"
    if backend not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown scan backend '{backend}'; choose one of {', '.join(BACKEND_NAMES)}"
        )
    if backend == "numba":
        if device.type != "cpu":
            raise BackendUnavailableError(f"scan backend 'numba' runs on CPU tensors, not {device}")
        if needs_grad:
            raise BackendUnavailableError(
                "scan backend 'numba' has no backward pass; use 'chunked' or 'auto' for training"
            )
        if not cpu.available():
            raise BackendUnavailableError("scan backend 'numba' needs numba: pip install numba")
    if backend == "mamba_ssm":
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"scan backend 'mamba_ssm' runs on CUDA tensors, not {device}"
            )
        if not cuda.available():
            raise BackendUnavailableError(
                "scan backend 'mamba_ssm' needs mamba-ssm: pip install 'dynamicvis-cli[cuda]'"
            )
    return backend


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    backend: str = "auto",
) -> Tensor:
    """Run the selective scan (shapes as in :func:`selective_scan_reference`) on one backend."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)
    )
    name = resolve_backend(backend, device=u.device, needs_grad=needs_grad)
    return BACKENDS[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus)


__all__ = ["BACKENDS", "BACKEND_NAMES", "resolve_backend", "selective_scan", "selective_scan_reference"]
