"""The STIM unit (sparse token interaction mixer): route, scan the chosen tokens, add back.

On a sequence x of L tokens (batch, L, C) in row-major grid order:

1. global tokens G: adaptive average pooling of x to ``n_global`` tokens (all tokens, before
   selection); with the default rule ``n_global`` is the number of grid rows, so G are row means;
2. router: logits p = x·w, weights a = softmax(p) over the L tokens; the k tokens of largest
   weight are selected, in descending order of weight (in training, the *selection* uses
   p + Gumbel(0, σ) on a detached copy, the weights stay noise-free);
3. the bidirectional Mamba block runs on [G ; selected], and the G outputs are dropped;
4. incremental connection: u = a·x everywhere, replaced at the selected positions by a times the
   block's output; the unit returns x + u.

k = L // keep_divisor, capped by ``token_budget`` when one is set. ``keep_divisor = 0`` means no
routing (the paper's dense variant): every token is scanned in positional order and the unit
returns the block output directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamicvis_cli.nn.mamba import BiMamba

GUMBEL_SIGMA_START = 0.1
GUMBEL_SIGMA_END = 1e-4


def gumbel_sigma(schedule: str, progress: float | None) -> float:
    """Router-noise scale for training at ``progress`` ∈ [0, 1] (fraction of training done).

    ``"fixed"``: 0.1 always. ``"decay"``: linear from 0.1 at progress 0 to 1e-4 at progress 1
    (the authors' schedule, with epoch/max_epochs passed in as ``progress``). ``"off"``: 0.
    """
    if schedule == "off":
        return 0.0
    if schedule == "fixed":
        return GUMBEL_SIGMA_START
    if schedule == "decay":
        if progress is None:
            raise ValueError("gumbel schedule 'decay' needs the training progress (0..1)")
        p = min(max(float(progress), 0.0), 1.0)
        return (GUMBEL_SIGMA_START - GUMBEL_SIGMA_END) * (1.0 - p) + GUMBEL_SIGMA_END
    raise ValueError(f"unknown gumbel schedule '{schedule}'; choose fixed, decay or off")


def num_selected(length: int, keep_divisor: int, token_budget: int | None) -> int:
    """Tokens scanned by a routing unit: L // divisor (at least 1), capped by the budget."""
    k = max(1, length // keep_divisor)
    return min(k, token_budget) if token_budget else k


class STIM(nn.Module):
    """One sparse-mixer unit. Keys as in the authors' checkpoints: ``spatial_gate``, ``spatial_mamba_mixer``."""

    def __init__(
        self,
        dim: int,
        *,
        keep_divisor: int,
        softmax_on_x: bool = True,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.keep_divisor = keep_divisor
        self.softmax_on_x = softmax_on_x
        if keep_divisor > 0:
            self.spatial_gate = nn.Linear(dim, 1, bias=False)
        self.spatial_mamba_mixer = BiMamba(dim, scan_backend=scan_backend)

    def forward(
        self,
        x: Tensor,
        *,
        n_global: int,
        token_budget: int | None = None,
        gumbel: float = 0.0,
        dense: bool = False,
        record: list[dict[str, Tensor]] | None = None,
    ) -> Tensor:
        """Args:
            x: (batch, L, C) tokens in row-major order.
            n_global: number of pooled global tokens put before the selection (0 = none).
            token_budget: cap on the number of selected tokens, or None.
            gumbel: σ of the selection noise (used only in training mode).
            dense: scan every token in positional order with no routing (the dense variant).
            record: if given, the router logits and selected indices are appended (debugging).

        Returns:
            (batch, L, C).
        """
        batch, length, dim = x.shape
        glob = F.adaptive_avg_pool1d(x.transpose(1, 2), n_global).transpose(1, 2) if n_global else None
        if dense or self.keep_divisor == 0:
            s = x if glob is None else torch.cat([glob, x], dim=1)
            return self.spatial_mamba_mixer(s)[:, n_global:]

        logits = self.spatial_gate(x).squeeze(-1)                              # (b, L)
        weights = logits.softmax(dim=-1)
        scores = logits.detach()
        if self.training and gumbel > 0:
            u = torch.rand_like(scores).clamp_(1e-20, 1.0)
            scores = scores - gumbel * torch.log(-torch.log(u))
        k = num_selected(length, self.keep_divisor, token_budget)
        idx = scores.topk(k, dim=-1, sorted=True).indices                        # descending
        if record is not None:
            record.append({"logits": logits.detach(), "selected": idx})
        gather = idx[..., None].expand(batch, k, dim)
        x_sel = x.gather(1, gather)
        s = x_sel if glob is None else torch.cat([glob, x_sel], dim=1)
        z = self.spatial_mamba_mixer(s)[:, n_global:]
        w_sel = weights.gather(1, idx)[..., None]
        base = x * (1.0 + weights[..., None]) if self.softmax_on_x else x
        return base.scatter(1, gather, x_sel + w_sel * z)
