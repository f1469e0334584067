"""A run interrupted and resumed ends with the weights of an uninterrupted run (same seed).

Augmentation, router noise (decay schedule, fed with progress) and token drop are all on, so
the test covers every source of randomness: item order and augmentation are functions of
(seed, epoch, index), the torch RNG is reseeded from (seed, step, rank) before each step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynamicvis_cli.data.augment import AugmentConfig
from dynamicvis_cli.errors import OutputExistsError
from dynamicvis_cli.train.checkpoint import list_checkpoints
from dynamicvis_cli.train.config import TrainConfig
from dynamicvis_cli.train.loop import fit
from tests.train.fixtures import DUBAI_PALETTE, make_dubai_pairs, make_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.data]


class Interrupt(Exception):
    pass


def config(task: str, data: Path, out: Path) -> TrainConfig:
    return TrainConfig(task=task, data=str(data), model="tiny", out=str(out), tile_size=64, steps=8,
                       batch_size=4, lr=2e-3, warmup_steps=2, save_every=3, keep_checkpoints=5, log_every=1,
                       device="cpu", augment=AugmentConfig(scale=(0.8, 1.25), colour=0.1), gumbel_schedule="decay",
                       token_drop=0.25, palette=DUBAI_PALETTE if task == "segment" else None)


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, task: str) -> None:
    if task == "classify":
        data = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=3)
    else:
        data = make_dubai_pairs(tmp_path / "data", n=4)
    fit(config(task, data, tmp_path / "straight"))

    def stop(step: int, row: dict) -> None:
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(config(task, data, tmp_path / "resumed"), on_step=stop)
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step-0000003", "step-0000006"]
    assert not (tmp_path / "resumed" / "config.json").exists()  # not finished: not a checkpoint yet
    with pytest.raises(OutputExistsError):
        fit(config(task, data, tmp_path / "resumed"))  # neither --resume nor --overwrite
    cfg = config(task, data, tmp_path / "resumed")
    cfg.resume = True
    summary = fit(cfg)
    assert summary["resumed_from_step"] == 6

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    log = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log]
    assert steps == list(range(1, 9))
    straight = (tmp_path / "straight" / "log.csv").read_text().splitlines()
    resumed = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    losses = lambda rows: [r.split(",")[3] for r in rows[1:]]  # noqa: E731
    assert losses(straight) == losses(resumed)


def test_gradient_accumulation_matches_the_full_batch(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=2)
    outs = []
    for accum in (1, 2):
        cfg = config("classify", data, tmp_path / f"accum{accum}")
        cfg.steps, cfg.accum, cfg.gumbel_schedule, cfg.token_drop = 3, accum, "off", 0.0
        fit(cfg)
        outs.append(load_file(str(tmp_path / f"accum{accum}" / "model.safetensors")))
    for k in outs[0]:
        torch.testing.assert_close(outs[1][k], outs[0][k], rtol=1e-4, atol=1e-5, msg=k)
