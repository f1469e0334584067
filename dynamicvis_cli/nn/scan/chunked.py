"""The selective scan in pure PyTorch, vectorised over time in chunks.

The sequence of length L is cut into ``n_chunks`` chunks of ``T`` steps (T ≈ √L), and the
positions ``c·T + i`` of all chunks advance together, so the Python loops run about 2T + L/T
times instead of L, each step working on a (batch, d, n_chunks, d_state) slab:

1. Inside every chunk at once, from a zero state: ``h_i = a_i · h_{i-1} + b_i`` with
   ``a_i = exp(Δ_i·A)``, ``b_i = Δ_i·u_i·B_i``; ``y_i = Σ_n h_i·C_i``; and the running product
   of the decays ``P_i = Π_{j≤i} a_j``.
2. Across chunks (a loop over the chunks on (batch, d, d_state) tensors): the state entering
   chunk c is ``S_c = P_{T-1}[c-1] · S_{c-1} + h_{T-1}[c-1]``.
3. Every position adds what its chunk's entering state contributes: ``y_i += Σ_n P_i·S_c·C_i``
   (the decays are recomputed, so no tensor of size L × d_state is ever stored).

Why this shape: Mamba v1's decays depend on the state index, so the matmul ("SSD") form needs
(T × T × d_state) decay matrices per chunk (~10x slower than a loop, as measured in DESIGN.md §5); products of
decays in ``(0, 1]`` never overflow; and slab-sized tensors stay in cache instead of streaming
(and page-faulting) L × d_state arrays through memory. Log-decays are floored at LOG_FLOOR so no
decay is subnormal (subnormal arithmetic is ~10x slower on x86); that changes results by less
than 1e-26 absolute. Every step is a differentiable torch op, so autograd gives the gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dynamicvis_cli.nn.scan.reference import discretize, finish

LOG_FLOOR = -60.0


def default_chunk(length: int) -> int:
    """Chunk length balancing the two loops (≈ 2T steps) against the carry loop (L/T): ≈ √L."""
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
    pad = n_chunks * T - length  # Δ = 0 at the end: decay 1, drive 0, earlier steps unaffected

    def steps(v: Tensor) -> Tensor:
        """(batch, ch, L) → (T, batch, ch, n_chunks): step i of every chunk is one slab."""
        v = F.pad(v, (0, pad)).view(v.shape[0], v.shape[1], n_chunks, T)
        return v.permute(3, 0, 1, 2).contiguous()

    delta_s = steps(delta)[..., None]                                   # (T, b, d, c, 1)
    du_s = steps(delta * u)[..., None]                                  # (T, b, d, c, 1)
    B_s = steps(B).transpose(2, 3)[:, :, None]                          # (T, b, 1, c, n)
    C_s = steps(C).transpose(2, 3)[:, :, None]                          # (T, b, 1, c, n)
    A_s = A[:, None, :]                                                 # (d, 1, n)

    def decay(i: int) -> Tensor:
        return torch.exp((delta_s[i] * A_s).clamp(min=LOG_FLOOR))       # (b, d, c, n)

    h = u.new_zeros(batch, d_inner, n_chunks, d_state)
    prod = torch.ones_like(h)
    ys = []
    for i in range(T):
        a = decay(i)
        h = torch.addcmul(du_s[i] * B_s[i], a, h)
        prod = prod * a
        ys.append((h * C_s[i]).sum(-1))

    carry = u.new_zeros(batch, d_inner, d_state)
    carries = []
    for c in range(n_chunks):
        carries.append(carry)
        carry = torch.addcmul(h[:, :, c], prod[:, :, c], carry)
    entering = torch.stack(carries, dim=2)                              # (b, d, c, n)

    if n_chunks > 1:
        prod = entering
        for i in range(T):
            prod = prod * decay(i)
            ys[i] = ys[i] + (prod * C_s[i]).sum(-1)
    y = torch.stack(ys, dim=-1).reshape(batch, d_inner, n_chunks * T)
    return finish(y[..., :length], u, D, z, out_dtype)
