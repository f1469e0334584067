"""One optimiser step and one log row, as ``dvis finetune`` and ``dvis pretrain`` both take them.

A step: the torch RNG reseeded from (seed, step, rank) (router noise, dropout, token drop), the
training progress fed to the router, the learning rate of the warm-up/cosine schedule set,
``accum`` micro-batches forward and backward under autocast (DDP all-reduces on the last
micro-batch only), a non-finite loss refused, gradients unscaled (fp16) and clipped, the
optimiser stepped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.runner import autocast
from dynamicvis_cli.train.distributed import DistInfo, mean_over_ranks
from dynamicvis_cli.train.hooks import ProgressFeed
from dynamicvis_cli.train.optim import lr_factor, set_lr
from dynamicvis_cli.train.step import to_device


@dataclass
class Stepper:
    """What a training step needs; :meth:`step` takes one, :meth:`row` averages the log window."""

    module: nn.Module          # the train module (loss in forward)
    wrapped: nn.Module         # the same, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scaler: Any                # torch.amp.GradScaler for fp16, else None
    feed: ProgressFeed
    info: DistInfo
    device: torch.device
    seed: int
    lr: float
    total: int
    warmup: int
    min_lr_ratio: float
    accum: int
    precision: str
    grad_clip: float | None

    def step(self, step: int, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        """Optimiser step ``step`` (0-based) on the next ``accum`` micro-batches; the loss parts,
        averaged over the micro-batches.

        Raises:
            DvisUsageError: the loss became NaN or infinite.
        """
        torch.manual_seed((self.seed * 1_000_003 + step) * 1009 + self.info.rank)
        self.feed.value = step / self.total
        set_lr(self.optimizer, self.lr * lr_factor(step, self.total, self.warmup, self.min_lr_ratio))
        self.optimizer.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        for m in range(self.accum):
            batch = to_device(next(batches), self.device)
            last = m == self.accum - 1 or not self.info.enabled  # DDP all-reduces on the last micro-step
            sync = contextlib.nullcontext() if last else self.wrapped.no_sync()  # type: ignore[operator]
            with sync:
                with autocast(self.device, self.precision):
                    result = self.wrapped(batch)
                loss = result["loss"] / self.accum
                if not torch.isfinite(loss):
                    raise DvisUsageError(f"loss became {float(loss)} at step {step + 1}; lower the learning "
                                         "rate or use fp32")
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for k, v in result.items():
                parts[k] = parts.get(k, 0.0) + float(v.detach()) / self.accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad],
                                           self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return parts

    def row(self, window: list[dict[str, float]], done: int, steps_per_epoch: int,
            start: float) -> dict[str, Any]:
        """The log row after step ``done``: the window's parts averaged (over steps and ranks)."""
        avg = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
        avg = mean_over_ranks(avg, self.info, self.device)
        return {"step": done, "epoch": round(done / steps_per_epoch, 4), "lr": self.optimizer.param_groups[0]["lr"],
                **{k: round(v, 6) for k, v in avg.items()}, "elapsed_s": round(time.perf_counter() - start, 2)}


__all__ = ["Stepper"]
