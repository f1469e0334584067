"""The selective scan in pure PyTorch, vectorised over time in chunks.

The sequence of length L is cut into ``n_chunks`` chunks of ``T`` steps (T ≈ √L). Three phases,
each a handful of tensor operations, so the Python loop runs T + n_chunks times instead of L:

1. Inside every chunk at once, the recurrence ``h_i = a_i · h_{i-1} + b_i`` is run from a zero
   state (a loop over the T positions, vectorised over all chunks, channels and states).
2. The state entering each chunk is carried across chunks: ``S_c = P_c · S_{c-1} + h_c``, where
   ``P_c`` is the product of the chunk's decays (a loop over the chunks, on (batch, d, n) tensors).
3. Every position gets its chunk's carry: ``h = h_local + P_{≤i} · S_{c-1}``.

Products of decays are computed as ``exp(cumsum(Δ·A))``: with A < 0 every factor lies in (0, 1],
so nothing overflows (a product can only underflow to 0, which is its true value in float32).
This avoids the (T × T × d_state) decay matrices of a matmul ("SSD") form, which Mamba v1's
state-dependent decays would need. Every step is a differentiable torch op, so autograd gives
the gradients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dynamicvis_cli.nn.scan.reference import discretize, finish


def default_chunk(length: int) -> int:
    """Chunk length minimising the Python-loop count T + L/T: the integer nearest √L."""
    return max(1, round(math.sqrt(length)))


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int | None = None,
) -> Tensor:
    """Same signature and result as :func:`selective_scan_reference`; ``chunk`` overrides T."""
    out_dtype = u.dtype
    u, delta, B = discretize(u, delta, A, B, delta_bias, delta_softplus)
    A = A.to(u.dtype)
    C = C.to(u.dtype)
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    if length == 0:
        return finish(u.new_zeros(batch, d_inner, 0), u, D, z, out_dtype)
    T = chunk or default_chunk(length)
    n_chunks = -(-length // T)
    pad = n_chunks * T - length
    # Padding at the end with Δ = 0 gives decay 1 and drive 0: earlier positions are unaffected.
    delta_p = torch.nn.functional.pad(delta, (0, pad))
    du = torch.nn.functional.pad(delta * u, (0, pad))
    B_p = torch.nn.functional.pad(B, (0, pad))
    C_p = torch.nn.functional.pad(C, (0, pad))

    # Layout (T, batch, d, n_chunks, n): each loop step reads one contiguous slab.
    log_a = delta_p.view(batch, d_inner, n_chunks, T).permute(3, 0, 1, 2)[..., None] * A[:, None, :]
    a = torch.exp(log_a)                                                     # (T, b, d, c, n)
    B_t = B_p.view(batch, d_state, n_chunks, T).permute(3, 0, 2, 1)[:, :, None]  # (T, b, 1, c, n)
    drive = du.view(batch, d_inner, n_chunks, T).permute(3, 0, 1, 2)[..., None] * B_t

    h = drive[0]
    local = [h]
    for i in range(1, T):
        h = a[i] * h + drive[i]
        local.append(h)
    h_local = torch.stack(local)                                             # (T, b, d, c, n)
    decay_to = torch.exp(torch.cumsum(log_a, dim=0))                         # Π_{j≤i} a_j

    carry = h_local.new_zeros(batch, d_inner, d_state)
    carries = []
    for c in range(n_chunks):
        carries.append(carry)
        carry = decay_to[-1, :, :, c] * carry + h_local[-1, :, :, c]
    carry_in = torch.stack(carries, dim=2)                                   # (b, d, c, n)

    h_all = h_local + decay_to * carry_in
    C_t = C_p.view(batch, d_state, n_chunks, T).permute(3, 0, 2, 1)          # (T, b, c, n)
    y = torch.einsum("tbdcn,tbcn->bdct", h_all, C_t).reshape(batch, d_inner, n_chunks * T)
    return finish(y[..., :length], u, D, z, out_dtype)
