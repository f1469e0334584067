"""numba kernels of the fused CPU scan (imported only when the ``numba`` backend first runs).

Kept at module level, without closures, so numba's on-disk cache (``cache=True``) finds them
again in the next process instead of recompiling (~2 s).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

f32 = np.float32


@intrinsic
def _int_bits_as_f32(typingctx: Any, bits: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(inline="always", fastmath=True, cache=True)
def exp_f32(x):  # type: ignore[no-untyped-def]
    """exp for float32 from arithmetic and one bit cast, so LLVM can vectorise it.

    exp(x) = 2^n · exp(r), n = round(x / ln 2), r = x − n·ln 2 (Cody–Waite split of ln 2), exp(r)
    by its degree-7 Taylor polynomial on |r| ≤ ln2/2, 2^n written into the exponent bits. Relative
    error ≤ 2.1e-7 for x ≥ −87; below, it returns exp(−87) ≈ 1.6e-38 (an absolute error under
    float32's smallest normal number).
    """
    xc = min(max(x, f32(-87.0)), f32(88.0))
    n = math.floor(xc * f32(1.4426950408889634) + f32(0.5))
    r = xc - n * f32(0.693145751953125)
    r = r - n * f32(1.428606765330187e-06)
    p = f32(1.0 / 5040.0)
    p = p * r + f32(1.0 / 720.0)
    p = p * r + f32(1.0 / 120.0)
    p = p * r + f32(1.0 / 24.0)
    p = p * r + f32(1.0 / 6.0)
    p = p * r + f32(0.5)
    p = p * r + f32(1.0)
    p = p * r + f32(1.0)
    return p * _int_bits_as_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


def decay_exp(x):  # type: ignore[no-untyped-def]  (numba compares these signatures as text)
    """exp chosen by type at compile time: :func:`exp_f32` for float32, libm for float64."""
    return math.exp(x)


@overload(decay_exp, inline="always")
def _decay_exp(x):  # type: ignore[no-untyped-def]
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: exp_f32(x)
    return lambda x: math.exp(x)


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def scan(u, delta, A, Bt, Ct, D, y):  # type: ignore[no-untyped-def]
    """y[b, d, t] = Σ_n h_t[n]·C_t[n] + D[d]·u_t with h_t = exp(Δ_t·A[d])·h_{t-1} + Δ_t·u_t·B_t.

    u, delta, y: (batch, d, L); A: (d, n); Bt, Ct: (batch, L, n) (time-major, so one step's n
    values are contiguous); D: (d,). Δ already has its bias and softplus.
    """
    n_batch, n_chan, length = u.shape
    d_state = A.shape[1]
    zero = u[0, 0, 0] * 0
    for job in numba.prange(n_batch * n_chan):
        b = job // n_chan
        d = job % n_chan
        h = np.zeros(d_state, dtype=u.dtype)
        a = A[d]
        for t in range(length):
            dt = delta[b, d, t]
            x = dt * u[b, d, t]
            bt = Bt[b, t]
            ct = Ct[b, t]
            acc = zero
            for k in range(d_state):
                h[k] = decay_exp(dt * a[k]) * h[k] + x * bt[k]
                acc += h[k] * ct[k]
            y[b, d, t] = acc + D[d] * u[b, d, t]
