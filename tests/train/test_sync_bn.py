"""SyncBatchNorm under DDP (``sync_bn: auto|on|off``): what can be shown on a CPU.

torch's SyncBatchNorm synchronises only CUDA tensors, so the synchronised training itself needs
several GPUs; here: which models have BatchNorm, the conversion there and back (same tensors,
same state-dict keys, so checkpoints written during or after training load into the plain model),
the choice of ``auto``/``on``/``off``, and ``on`` on a CPU refused before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.train.config import TrainConfig, from_mapping, parse_sets, resolve
from dynamicvis_cli.train.distributed import (
    DistInfo,
    count_batchnorm,
    from_sync_batchnorm,
    to_sync_batchnorm,
    wants_sync_bn,
)
from dynamicvis_cli.train.model import build_for_training
from dynamicvis_cli.train.step import TrainModule


def _train_module(task: str) -> TrainModule:
    torch.manual_seed(0)
    net, _, _ = build_for_training("tiny", task, ["a", "b"], in_chans=3, tile_size=64)
    return TrainModule(task, net, 2, head_channels=32)


def _kinds(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_which_heads_have_batchnorm() -> None:
    # UperNet (+ its auxiliary FCN head) and the change decoder; FCOS/Mask R-CNN use GroupNorm
    # or none, the classifier none
    assert count_batchnorm(_train_module("segment")) > 0
    assert count_batchnorm(_train_module("segment").aux) > 0  # type: ignore[arg-type]
    assert count_batchnorm(_train_module("change")) > 0
    assert count_batchnorm(_train_module("classify")) == 0


@pytest.mark.parametrize("task", ["segment", "change"])
def test_conversion_there_and_back_keeps_tensors_and_state_keys(task: str) -> None:
    module = _train_module(task)
    n = count_batchnorm(module)
    before = module.state_dict()
    params = [id(p) for p in module.parameters()]
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        module.eval()
        expected = module.model.predict(x) if task == "segment" else module.model.predict(x, x.flip(-1))

    assert to_sync_batchnorm(module) is module
    assert _kinds(module) == {nn.SyncBatchNorm} and count_batchnorm(module) == n
    synced = module.state_dict()
    assert list(synced) == list(before)  # same keys, same order
    assert all(synced[k].data_ptr() == before[k].data_ptr() for k in before)  # the same tensors
    assert [id(p) for p in module.parameters()] == params  # the optimiser still holds them
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == set(params)
    with torch.no_grad():  # outside a process group SyncBatchNorm is BatchNorm
        got = module.model.predict(x) if task == "segment" else module.model.predict(x, x.flip(-1))
    assert torch.equal(got, expected)

    # a checkpoint written while synchronised loads into the plain model
    plain = _train_module(task)
    plain.load_state_dict(synced, strict=True)

    module.train()
    assert from_sync_batchnorm(module) is module
    assert _kinds(module) == {nn.BatchNorm2d} and count_batchnorm(module) == n
    assert all(m.training for m in module.modules() if isinstance(m, nn.BatchNorm2d))
    back = module.state_dict()
    assert list(back) == list(before)
    assert all(back[k].data_ptr() == before[k].data_ptr() for k in before)
    assert [id(p) for p in module.parameters()] == params


def test_a_lone_batchnorm_is_refused() -> None:
    with pytest.raises(ValueError, match="inside a module"):
        to_sync_batchnorm(nn.BatchNorm2d(4))


def test_auto_on_off() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)  # a device name; no GPU is touched
    one, two = DistInfo(), DistInfo(rank=0, world=2)
    assert wants_sync_bn("auto", cuda, two) is True
    assert wants_sync_bn("on", cuda, two) is True
    assert wants_sync_bn("off", cuda, two) is False
    assert wants_sync_bn("auto", cuda, one) is False  # one process: nothing to synchronise
    assert wants_sync_bn("auto", cpu, two) is False  # gloo on CPU: per-process statistics
    assert wants_sync_bn("off", cpu, two) is False
    with pytest.raises(DvisUsageError, match="sync_bn on needs CUDA"):
        wants_sync_bn("on", cpu, two)
    with pytest.raises(DvisUsageError, match="sync_bn on needs CUDA"):
        wants_sync_bn("on", cpu, one)


def test_config_values() -> None:
    kw = {"model_tile": 64, "model_mean": [0.5] * 3, "model_std": [0.2] * 3, "in_chans": 3, "require_io": False}
    assert resolve(TrainConfig(), **kw).sync_bn == "auto"  # type: ignore[arg-type]
    # YAML (and --set) read a bare on/off as booleans
    assert resolve(from_mapping(parse_sets(["sync_bn=on"])), **kw).sync_bn == "on"  # type: ignore[arg-type]
    assert resolve(from_mapping(parse_sets(["sync_bn=off"])), **kw).sync_bn == "off"  # type: ignore[arg-type]
    with pytest.raises(DvisUsageError, match="sync_bn 'always': choose one of auto, on, off"):
        resolve(TrainConfig(sync_bn="always"), **kw)  # type: ignore[arg-type]


@pytest.mark.data
def test_on_without_cuda_is_a_usage_error_before_anything_is_written(tmp_path: Path) -> None:
    from tests.cli.test_finetune_cli import SHORT, cli
    from tests.train.fixtures import DUBAI_PALETTE, make_dubai_pairs

    data = make_dubai_pairs(tmp_path / "data", n=2)
    palette = tmp_path / "palette.json"
    palette.write_text(json.dumps(DUBAI_PALETTE))
    code, out, err = cli("finetune", "--task", "segment", "--data", data, "--palette", palette, "-o",
                         tmp_path / "run", "--set", "sync_bn=on", *SHORT, "--tile-size", 64)
    assert code == 2 and out == ""
    assert "sync_bn on needs CUDA" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
