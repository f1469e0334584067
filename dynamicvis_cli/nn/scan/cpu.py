"""A fused CPU selective scan: one numba kernel, parallel over (batch, channel).

Each (batch, channel) pair keeps its d_state-long state in registers and walks the sequence once;
the decay ``exp(Δ·A)`` and the D skip are computed inside the loop, so nothing of size
L × d_state is ever written to memory. Forward only (inference): when a gradient is needed,
dispatch uses the chunked torch path. The kernels live in ``_numba_kernels`` (imported on first
use, so ``import dynamicvis_cli.nn`` does not load numba).

For float32 the decay uses ``exp_f32``, an exp written from arithmetic and one bit cast so that
LLVM vectorises the loop over the state (numba's ``math.exp`` is a scalar libm call unless an
SVML-patched LLVM is installed): 3.6x faster than ``math.exp`` for the whole kernel at the
backbone's shapes (9.4 vs 33.6 ms, 2 × 192 channels × 2176 steps, 2-core Xeon), relative error
≤ 2.1e-7 for x ≥ −87. float64 uses ``math.exp``.

Δ's bias and softplus are applied by torch before the kernel: a scalar ``log1p(exp(·))`` per step
inside the loop stops LLVM from vectorising it (measured 29 vs 7.5 ms).

numba caches the compiled kernel under ``__pycache__`` (``cache=True``); a new process loads it
instead of compiling.

Threads: the kernel runs on numba's ``workqueue`` threading layer (unless ``NUMBA_THREADING_LAYER``
says otherwise) with as many threads as torch uses (``torch.get_num_threads()``, i.e.
``OMP_NUM_THREADS``). numba's default ``omp`` layer starts a second OpenMP pool beside torch's,
and once it has run, torch's own parallel regions slowed: training steps after a validation pass
went from 3.0 s to 6–20 s (tiny detector, 256 px, batch 8, two 1-thread processes on 2 cores),
the slow-down seen in the tree-crown runs of docs/benchmarks.md. With ``workqueue`` they stayed at
3.6–4.1 s and inference was no slower. ``workqueue`` does not allow two threads of one process to
run the kernel at once; dvis runs its model from one thread.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch
from torch import Tensor

from dynamicvis_cli.nn.scan.reference import discretize

_kernel: Any = None
_numba: Any = None


def available() -> bool:
    """Whether numba is installed (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


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
    global _kernel, _numba
    if _kernel is None:
        import numba

        if "NUMBA_THREADING_LAYER" not in os.environ:
            numba.config.THREADING_LAYER = "workqueue"
        from dynamicvis_cli.nn.scan._numba_kernels import scan

        _kernel, _numba = scan, numba
    _numba.set_num_threads(max(1, min(torch.get_num_threads(), _numba.config.NUMBA_NUM_THREADS)))
    out_dtype = u.dtype
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32

    def arr(t: Tensor) -> Any:
        return t.detach().to(dtype).contiguous().numpy()

    with torch.no_grad():
        u, delta, B = discretize(u.detach(), delta.detach(), A, B, delta_bias, delta_softplus)
        y = torch.empty_like(u)
        D_arr = arr(D) if D is not None else torch.zeros(u.shape[1], dtype=dtype).numpy()
        _kernel(arr(u), arr(delta), arr(A), arr(B.transpose(1, 2)), arr(C.transpose(1, 2)), D_arr, y.numpy())
        if z is not None:
            y = y * torch.nn.functional.silu(z.to(dtype))
        return y.to(out_dtype)
