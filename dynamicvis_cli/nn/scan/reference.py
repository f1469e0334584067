"""The selective scan, step by step: the readable specification every other backend is tested against.

Mamba v1's recurrence, per batch b, channel d and state n, starting from a zero state:

    Δ_t      = softplus(delta_t + delta_bias)            (when delta_softplus)
    state_t  = exp(Δ_t · A[d, n]) · state_{t-1} + Δ_t · B_t[n] · u_t
    y_t      = Σ_n state_t[n] · C_t[n] + D[d] · u_t
    out_t    = y_t · SiLU(z_t)                           (when z is given)

Computed in float32 (or float64 when the inputs are float64) and cast back to the input dtype,
as mamba_ssm's ``selective_scan_ref`` does. Only torch is imported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discretize(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
    delta_bias: Tensor | None, delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Common preamble of every backend: compute dtype, Δ, and B·u·Δ factors (not the decays).

    Returns ``(compute_u, Δ, B)`` in the compute dtype (float32, or float64 for float64 input).
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(dtype)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, B.to(dtype)


def finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """Add the D skip connection, gate with SiLU(z), cast back."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_reference(
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
    """Selective scan as a loop over time.

    Args:
        u: (batch, d_inner, L) input.
        delta: (batch, d_inner, L) time steps before bias/softplus.
        A: (d_inner, d_state) state matrix (negative for a stable scan).
        B: (batch, d_state, L) input projection per step.
        C: (batch, d_state, L) output projection per step.
        D: (d_inner,) skip weights, optional.
        z: (batch, d_inner, L) gate, optional.
        delta_bias: (d_inner,) added to delta before softplus, optional.
        delta_softplus: apply softplus to delta.

    Returns:
        (batch, d_inner, L) in u's dtype.
    """
    out_dtype = u.dtype
    u, delta, B = discretize(u, delta, A, B, delta_bias, delta_softplus)
    A = A.to(u.dtype)
    C = C.to(u.dtype)
    batch, d_inner, length = u.shape
    state = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)                       # (b, d, n)
        drive = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        state = decay * state + drive
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, d_inner, 0)
    return finish(y, u, D, z, out_dtype)
