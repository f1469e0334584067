"""Task models on the tiny trunk: shapes, gradients, weights provenance rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynamicvis_cli.checkpoints.import_authors import import_checkpoint
from dynamicvis_cli.checkpoints.store import save_checkpoint
from dynamicvis_cli.checkpoints.task import load_task_model
from dynamicvis_cli.errors import DvisUsageError


@pytest.mark.parametrize("task", ["classify", "segment", "detect", "change"])
def test_predict_contract(task: str) -> None:
    loaded = load_task_model("tiny", task, classes=["a", "b", "c"], random_weights=True, in_chans=4)
    assert loaded.random and loaded.weights == {"trunk": "random", "head": "random"}
    x = torch.randn(2, 4, 96, 128)
    with torch.no_grad():
        out = loaded.module.predict(x, x) if task == "change" else loaded.module.predict(x)
    if task == "classify":
        assert out.shape == (2, 3)
    elif task == "detect":
        assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
        assert out[0]["boxes"].shape[1] == 4
    else:
        assert out.shape == (2, 3, 96, 128)


def test_change_with_one_class_adds_unchanged() -> None:
    loaded = load_task_model("tiny", "change", classes=["building"], random_weights=True)
    assert loaded.config.classes == ["unchanged", "building"]


def test_random_weights_must_be_asked_for(official_small_a: Path, tmp_path: Path) -> None:
    with pytest.raises(DvisUsageError, match="--random-weights"):
        load_task_model("tiny", "segment", classes=["a"])
    backbone = tmp_path / "bb"
    import_checkpoint(official_small_a / "weights.safetensors", backbone)
    with pytest.raises(DvisUsageError, match="segment head would have random weights"):
        load_task_model(backbone, "segment", classes=["a", "b"])
    with pytest.raises(DvisUsageError, match="--classes"):
        load_task_model(backbone, "segment", random_weights=True)
    part = load_task_model(backbone, "segment", classes=["a", "b"], random_weights=True)
    assert part.weights == {"trunk": "checkpoint", "head": "random"}


def test_task_checkpoint_round_trip(tmp_path: Path) -> None:
    first = load_task_model("tiny", "segment", classes=["water", "land"], random_weights=True)
    out = tmp_path / "seg"
    save_checkpoint(first.module.state_dict(), first.config, out)
    again = load_task_model(out, "segment")
    assert again.weights == {"trunk": "checkpoint", "head": "checkpoint"} and not again.random
    assert again.config.classes == ["water", "land"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(first.module.predict(x), again.module.predict(x))
    with pytest.raises(DvisUsageError, match="cannot classify"):
        load_task_model(out, "classify")
    with pytest.raises(DvisUsageError, match="differ"):
        load_task_model(out, "segment", classes=["a", "b"])


@pytest.mark.parametrize("task", ["classify", "segment", "change"])
def test_task_models_train(task: str) -> None:
    loaded = load_task_model("tiny", task, classes=["a", "b"], random_weights=True)
    net = loaded.module.train()
    x = torch.randn(2, 3, 64, 64)
    out = net(x, x) if task == "change" else net(x)
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_detector_trains_with_targets() -> None:
    loaded = load_task_model("tiny", "detect", classes=["ship"], random_weights=True)
    net = loaded.module.train()
    images = [torch.randn(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 24.0]]), "labels": torch.tensor([1])}]
    losses = net(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
