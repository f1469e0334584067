"""AdamW with decay only on weights, and a linear warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Trainable parameters in two groups: matrices and kernels decayed; biases, norms, the
    positional embedding and Mamba's ``A_log``/``D`` not (mamba_ssm marks those
    ``_no_weight_decay``; the rest is the usual AdamW practice)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or leaf in ("pos_embed", "A_log", "D"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=(0.9, 0.999))


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (0-based).

    Linear warm-up from ``1/warmup`` to 1 over ``warmup`` steps, then a cosine from 1 down to
    ``min_ratio`` at ``total``.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
