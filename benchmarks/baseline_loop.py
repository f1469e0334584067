"""What the baseline benchmarks (``detect_baseline.py``, ``segment_baseline.py``) share: the
training batches, the budgeted training loop, one optimiser step, the result fields and the
report that is written after each model.

A budget is wall-clock seconds (``Budget(seconds=...)``: the loop starts steps until that much
time has passed, so the last step may overrun it) or optimiser steps (``Budget(steps=...)``).
Its *progress* at a step is the fraction of the budget used when the step starts (elapsed /
seconds, or step / steps): what ``dvis finetune`` feeds the router's noise schedule. Its
warm-up + cosine learning-rate factor is :func:`dynamicvis_cli.train.optim.lr_factor` for a
step budget (exactly ``dvis finetune``'s) and the same curve over time for a seconds budget.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dynamicvis_cli.data.dataset import TaskDataset, collate
from dynamicvis_cli.train.loop import BatchPlan
from dynamicvis_cli.train.optim import lr_factor

sys.path.insert(0, str(Path(__file__).parent))
from classify_baseline import machine


def batch_stream(ds: TaskDataset, *, batch_size: int, seed: int,
                 workers: int) -> Iterator[dict[str, Any]]:
    """Endless training batches in ``dvis finetune``'s order (:class:`BatchPlan`, one process)."""
    per_epoch = max(1, len(ds) // batch_size)
    plan = BatchPlan(seed=seed, items=len(ds), batch_size=batch_size, accum=1,
                     steps_per_epoch=per_epoch, start=0, stop=10**9)
    return iter(DataLoader(ds, batch_sampler=plan, num_workers=workers, collate_fn=collate))


@dataclass
class Budget:
    """Training budget: ``seconds`` of wall-clock time or ``steps`` optimiser steps (one only)."""

    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.steps is None):
            raise ValueError("give a budget in seconds or in steps (one of them)")

    def left(self, step: int, elapsed: float) -> bool:
        """Whether another step starts."""
        if self.steps is not None:
            return step < self.steps
        assert self.seconds is not None
        return elapsed < self.seconds

    def progress(self, step: int, elapsed: float) -> float:
        """Fraction of the budget used when step ``step`` starts (0..1)."""
        if self.steps is not None:
            return step / self.steps
        assert self.seconds is not None
        return min(1.0, elapsed / self.seconds)

    def lr_factor(self, step: int, elapsed: float, *, warmup: float = 0.05,
                  min_ratio: float = 0.01) -> float:
        """Multiplier of the base rate for step ``step``: linear warm-up over the first ``warmup``
        of the budget, then a cosine down to ``min_ratio``.

        Steps: ``dvis finetune``'s own schedule (warm-up ``round(warmup * steps)`` steps, step s
        at ``(s + 1) / warm-up``). Seconds: the same curve at the fraction of time used when the
        step *ends*, estimated as elapsed + the mean step time so far (the first step, whose
        duration is not known yet, runs at ``min_ratio``).
        """
        if self.steps is not None:
            return lr_factor(step, self.steps, round(warmup * self.steps), min_ratio)
        assert self.seconds is not None
        if step == 0:
            return min_ratio
        p = min(1.0, (elapsed + elapsed / step) / self.seconds)
        if p < warmup:
            return max(min_ratio, p / warmup)
        t = (p - warmup) / max(1e-9, 1.0 - warmup)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    def describe(self) -> dict[str, Any]:
        return {"seconds_per_model": self.seconds} if self.seconds is not None else \
            {"steps_per_model": self.steps}


@dataclass
class TrainLog:
    """Losses of the steps taken and the time they took."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    diverged_at_step: int | None = None

    def summary(self) -> dict[str, Any]:
        """The result fields every baseline reports about its training."""
        steps = len(self.losses)
        tail = self.losses[-50:]
        out: dict[str, Any] = {
            "steps": steps, "train_seconds": round(self.seconds, 1),
            "seconds_per_step": round(self.seconds / max(steps, 1), 2),
            "first_loss": round(self.losses[0], 4) if self.losses else None,
            "last_50_mean_loss": round(sum(tail) / max(1, len(tail)), 4),
        }
        if self.diverged_at_step is not None:
            out["diverged_at_step"] = self.diverged_at_step
        return out


StepFn = Callable[[int, float], float]


def train_for(budget: Budget, step_fn: StepFn, *, name: str, log_every: int = 50) -> TrainLog:
    """Call ``step_fn(step, elapsed_seconds)`` (one optimiser step, returning its loss) while
    the budget lasts. A step that raises :class:`FloatingPointError` (a non-finite loss, refused
    before the optimiser moves) ends training; the log records where."""
    log = TrainLog()
    t0 = time.perf_counter()
    step = 0
    while budget.left(step, time.perf_counter() - t0):
        try:
            log.losses.append(step_fn(step, time.perf_counter() - t0))
        except FloatingPointError as exc:
            log.diverged_at_step = step + 1
            print(f"{name}: stopped at step {step + 1}: {exc}", file=sys.stderr)
            break
        step += 1
        if step % log_every == 0:
            print(f"{name}: step {step} loss {sum(log.losses[-log_every:]) / log_every:.4f} "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    log.seconds = time.perf_counter() - t0
    return log


def optimise(opt: torch.optim.Optimizer, loss: Tensor, params: Any,
             grad_clip: float | None) -> None:
    """Zero the gradients, back-propagate ``loss``, clip to ``grad_clip`` (when set) and step."""
    opt.zero_grad()
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def parameters_m(module: nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def new_report(benchmark: str, **fields: Any) -> dict[str, Any]:
    """The report's header (date, machine) with ``fields``, and an empty ``results`` list."""
    return {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
            **fields, "results": []}


def run_models(report: dict[str, Any], models: str, train_one: Callable[[str], dict[str, Any]],
               out: Path | None) -> None:
    """Train and score each of the comma-separated ``models``; the report is written to ``out``
    after each model (a stopped run keeps what it measured) and printed at the end."""
    for name in models.split(","):
        report["results"].append(train_one(name.strip()))
        if out is not None:
            out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
