"""DDP: two CPU processes (gloo, launched by torchrun) train to the result of one process with the
same global batch. Router noise is off: its draws depend on how a batch is split over ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynamicvis_cli.data.augment import AugmentConfig
from dynamicvis_cli.train.config import TrainConfig
from dynamicvis_cli.train.loop import fit
from tests.train.fixtures import make_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", ("water", "vegetation", "building"), per_class=2)
    common = dict(task="classify", data=str(data), model="tiny", tile_size=64, steps=4, batch_size=4, lr=2e-3,
                  warmup_steps=1, freeze_stages=1, gumbel_schedule="off", log_every=1, device="cpu",
                  augment=AugmentConfig(scale=(0.8, 1.25), colour=0.1))
    fit(TrainConfig(out=str(tmp_path / "one"), **common))  # type: ignore[arg-type]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("WORLD_SIZE", None)
    args = ["finetune", "--task", "classify", "--data", data, "-m", "tiny", "--tile-size", 64, "--steps", 4,
            "--batch-size", 4, "--lr", 2e-3, "--warmup-steps", 1, "--freeze-stages", 1,
            "--gumbel-schedule", "off", "--log-every", 1, "--device", "cpu",
            "--set", "augment.scale=[0.8, 1.25]", "--set", "augment.colour=0.1", "-o", tmp_path / "two", "-q"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run([*torchrun, "-m", "dynamicvis_cli", *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summaries = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2  # rank 0 alone reports

    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = lambda p: [json.loads(x)["loss"] for x in (p / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "two") == pytest.approx(rows(tmp_path / "one"), rel=1e-4)
