"""Scene classification: spatial mean of the last stage → LayerNorm → linear (the authors' recipe)."""

from __future__ import annotations

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """(batch, C, H, W) last-stage map → (batch, num_classes) logits.

    The LayerNorm (eps 1e-6) after the mean is the authors' ``post_meanpool_norm``.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.fc = nn.Linear(in_dim, num_classes)

    def pooled(self, x: Tensor) -> Tensor:
        """The normalised pooled vector (batch, C), also the embedding used for retrieval."""
        return self.norm(x.mean(dim=(-2, -1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pooled(x))
