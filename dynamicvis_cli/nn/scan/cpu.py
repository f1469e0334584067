"""A fused CPU selective scan: one numba kernel, parallel over (batch, channel).

Each (batch, channel) pair keeps its d_state-long state in registers and walks the sequence
once, computing the decay ``exp(Δ·A)`` inside the loop, so nothing of size L × d_state is ever
written to memory. Forward only (inference): autograd falls back to the chunked torch path.
numba compiles the kernel on first use and caches the machine code beside this file
(``cache=True``), so later processes start without compiling.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynamicvis_cli._deps import optional, require
from dynamicvis_cli.nn.scan.reference import discretize, finish

_numba: Any = optional("numba")
_kernel: Any = None


def available() -> bool:
    """Whether numba imports on this machine."""
    return _numba is not None


def _build_kernel() -> Any:
    numba = require("numba", extra=None, purpose="the fused CPU scan backend")

    @numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def scan_kernel(u, delta, A, Bt, Ct, y):  # type: ignore[no-untyped-def]
        n_batch, n_chan, length = u.shape
        d_state = A.shape[1]
        for job in numba.prange(n_batch * n_chan):
            b = job // n_chan
            d = job % n_chan
            h = np.zeros(d_state, dtype=u.dtype)
            a = A[d]
            for t in range(length):
                dt = delta[b, d, t]
                x = dt * u[b, d, t]
                acc = h[0] * 0  # same dtype as the state
                for k in range(d_state):
                    h[k] = math.exp(dt * a[k]) * h[k] + x * Bt[b, t, k]
                    acc += h[k] * Ct[b, t, k]
                y[b, d, t] = acc

    return scan_kernel


def selective_scan_numba(
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
    """Same signature and result as :func:`selective_scan_reference`; CPU tensors, no autograd."""
    global _kernel
    if _kernel is None:
        _kernel = _build_kernel()
    out_dtype = u.dtype
    with torch.no_grad():
        u, delta, B = discretize(u, delta, A, B, delta_bias, delta_softplus)
        dtype = u.dtype
        u_np = u.contiguous().numpy()
        y = torch.empty_like(u)
        _kernel(
            u_np,
            delta.contiguous().numpy(),
            A.detach().to(dtype).contiguous().numpy(),
            B.transpose(1, 2).contiguous().numpy(),
            C.detach().to(dtype).transpose(1, 2).contiguous().numpy(),
            y.numpy(),
        )
        return finish(y, u, D, z, out_dtype)
