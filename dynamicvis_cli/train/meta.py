"""Meta-embedding pretraining's objective (DESIGN.md §2.3, paper §3.4).

Region vectors (every annotated box pooled from all FPN levels, see
:mod:`dynamicvis_cli.nn.heads.region`) are L2-normalised and compared with L2-normalised,
learnable category embeddings ("meta-embeddings") under a learnable logit scale. The loss is
MIL-NCE: for each category ``c`` present in the batch, every region of ``c`` is a positive pair
with ``c``'s embedding (all of them in the numerator, the multiple-instance part), and the
negatives are the pairs of ``c``'s embedding with the regions of the other categories and of
``c``'s regions with the other present categories' embeddings::

    L_c = -log( sum_{i: y_i = c} e^{s_ic} / (sum_{i: y_i = c} e^{s_ic} + sum_{i: y_i != c} e^{s_ic}
                                                + sum_{i: y_i = c} sum_{k present, k != c} e^{s_ik}) )

averaged over the present categories, plus ``ce_weight`` x the cross-entropy of the region
classifier's logits. Both are computed on the regions of *all* processes: features, logits and
labels are gathered (:func:`torch.distributed.nn.functional.all_gather`, which carries gradients
back to the process that made each feature) before the loss, so N processes with B/N images each
see the same negatives, and compute the same loss, as one process with B images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def gather_regions(*tensors: Tensor, labels: Tensor) -> tuple[list[Tensor], Tensor]:
    """Concatenate each rank's rows in rank order (different row counts allowed), keeping the
    gradient path to the local rows; ``labels`` are gathered without gradient. Identity when not
    distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors), labels
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    n = torch.tensor([labels.shape[0]], device=labels.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    sizes = [int(c) for c in counts]
    most = max(sizes)

    def pad(t: Tensor, value: float = 0.0) -> Tensor:
        extra = most - t.shape[0]
        return t if extra == 0 else torch.cat([t, t.new_full((extra, *t.shape[1:]), value)])

    out = []
    for t in tensors:
        parts = all_gather(pad(t))
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    label_parts = [torch.empty_like(pad(labels, -1)) for _ in range(world)]
    dist.all_gather(label_parts, pad(labels, -1))
    return out, torch.cat([p[:s] for p, s in zip(label_parts, sizes)])


def mil_nce(sim: Tensor, labels: Tensor) -> Tensor:
    """MIL-NCE of (N, K) region-category similarities (already scaled) for labels (N,) (the
    module docstring's ``L_c``, averaged over the categories present)."""
    present = torch.unique(labels)
    pos = labels[:, None] == present[None, :]                      # (N, P): region i is of category p
    s = sim[:, present]                                            # (N, P)
    neg_inf = torch.finfo(s.dtype).min
    numerator = torch.logsumexp(s.masked_fill(~pos, neg_inf), dim=0)        # (P,)
    # negatives: the embedding of p with other categories' regions (column p, rows not of p) ...
    others = torch.logsumexp(s.masked_fill(pos, neg_inf), dim=0)             # (P,)
    # ... and p's regions with the other present categories' embeddings
    own_rows = s.masked_fill(pos, neg_inf)                                    # (N, P): drop own category
    row_neg = torch.logsumexp(own_rows, dim=1)                                # (N,)
    cross = torch.logsumexp(row_neg[:, None].masked_fill(~pos, neg_inf), dim=0)  # (P,)
    denominator = torch.logsumexp(torch.stack([numerator, others, cross]), dim=0)
    return (denominator - numerator).mean()


class MetaEmbeddingLoss(nn.Module):
    """Learnable category embeddings + logit scale, and the MIL-NCE + CE loss.

    Args:
        channels: region vector width (the FPN's).
        categories: category names (row order of the embeddings).
        init: (K, D) initial embeddings (e.g. text embeddings); random (normal, std 0.02) if None.
            A D different from ``channels`` adds a linear projection of the region vectors.
        ce_weight: weight of the classifier's cross-entropy.
        temperature: initial temperature (the logit scale starts at 1/temperature, learnable,
            capped at 100 as in CLIP).
    """

    def __init__(self, channels: int, categories: Sequence[str], *, init: Tensor | None = None,
                 ce_weight: float = 1.0, temperature: float = 0.07) -> None:
        super().__init__()
        self.categories = list(categories)
        k = len(self.categories)
        if init is None:
            init = torch.randn(k, channels) * 0.02
        if init.shape[0] != k:
            raise ValueError(f"{init.shape[0]} embeddings for {k} categories")
        dim = int(init.shape[1])
        self.proj: nn.Module = nn.Identity() if dim == channels else nn.Linear(channels, dim)
        self.embeddings = nn.Parameter(init.detach().clone().float())
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.ce_weight = float(ce_weight)

    def similarity(self, features: Tensor) -> Tensor:
        f = F.normalize(self.proj(features.float()), dim=-1)
        e = F.normalize(self.embeddings, dim=-1)
        return self.logit_scale.exp().clamp(max=100.0) * f @ e.t()

    def forward(self, features: Tensor, logits: Tensor, labels: Tensor, *,
                gather: bool = True) -> dict[str, Tensor]:
        """``features`` (N, C) region vectors, ``logits`` (N, K) classifier outputs, ``labels`` (N,)
        of this process → ``loss``, ``mil_nce``, ``ce``, ``scale`` (detached parts for the log).
        ``gather=False`` computes the loss on this process's regions only (for comparison)."""
        if gather:
            (features, logits), labels = gather_regions(features, logits, labels=labels)
        if labels.numel() == 0:
            zero = features.sum() * 0.0 + logits.sum() * 0.0 + self.embeddings.sum() * 0.0 \
                + self.logit_scale * 0.0
            return {"loss": zero, "mil_nce": zero.detach(), "ce": zero.detach(),
                    "scale": self.logit_scale.exp().detach()}
        milnce = mil_nce(self.similarity(features), labels)
        ce = F.cross_entropy(logits.float(), labels)
        return {"loss": milnce + self.ce_weight * ce, "mil_nce": milnce.detach(), "ce": ce.detach(),
                "scale": self.logit_scale.exp().detach()}


def load_embeddings(path: str, categories: Sequence[str]) -> Tensor:
    """(K, D) embeddings of ``categories`` from a file of vectors per category name.

    ``.safetensors``: one tensor per category name, or tensors ``embeddings`` (K', D) plus a
    ``names`` metadata entry (comma-separated); ``.npy``/``.npz``: a (K', D) array with
    ``names`` in an ``.npz`` or a ``.txt`` beside the ``.npy`` (one name per line).

    Raises:
        DatasetError: unreadable file, or categories it does not name.
    """
    from pathlib import Path

    import numpy as np

    from dynamicvis_cli.errors import DatasetError

    p = Path(path)
    if not p.is_file():
        raise DatasetError(p, "embedding file does not exist")
    table: dict[str, np.ndarray] = {}
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="np") as f:
                meta = f.metadata() or {}
                keys = list(f.keys())
                if "embeddings" in keys and "names" in meta:
                    arr = f.get_tensor("embeddings")
                    table = dict(zip(meta["names"].split(","), arr))
                else:
                    table = {k: f.get_tensor(k) for k in keys}
        elif p.suffix == ".npz":
            z = np.load(p, allow_pickle=False)
            table = dict(zip([str(n) for n in z["names"]], z["embeddings"]))
        elif p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            names_file = p.with_suffix(".txt")
            if not names_file.is_file():
                raise DatasetError(p, f"a .npy of embeddings needs its category names in {names_file.name}")
            names = [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
            if len(names) != len(arr):
                raise DatasetError(names_file, f"{len(names)} names for {len(arr)} embeddings")
            table = dict(zip(names, arr))
        else:
            raise DatasetError(p, "embeddings are read from .safetensors, .npz or .npy (+ .txt names)")
    except DatasetError:
        raise
    except Exception as exc:  # corrupt files: numpy / safetensors errors differ
        raise DatasetError(p, f"cannot read embeddings ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    missing = [c for c in categories if c not in table]
    if missing:
        raise DatasetError(p, f"no embedding for categor{'y' if len(missing) == 1 else 'ies'} "
                              f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
    dims = {np.asarray(table[c]).reshape(-1).shape[0] for c in categories}
    if len(dims) != 1:
        raise DatasetError(p, f"embeddings of different lengths {sorted(dims)}")
    return torch.from_numpy(np.stack([np.asarray(table[c], dtype=np.float32).reshape(-1) for c in categories]))


__all__ = ["MetaEmbeddingLoss", "gather_regions", "load_embeddings", "mil_nce"]
