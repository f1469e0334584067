"""Task models on the tiny trunk: shapes, gradients, weights provenance rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynamicvis_cli.checkpoints.import_authors import import_checkpoint
from dynamicvis_cli.checkpoints.store import save_checkpoint
from dynamicvis_cli.checkpoints.task import load_task_model
from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.nn.tasks import build_task_model


@pytest.mark.parametrize("task", ["classify", "segment", "detect", "instance", "change"])
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
    elif task == "instance":
        assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels", "masks"}
        for o in out:
            n = len(o["scores"])
            assert o["boxes"].shape == (n, 4) and o["labels"].shape == (n,)
            assert o["masks"].shape == (n, 1, 96, 128) and o["masks"].dtype == torch.float32
            assert ((o["labels"] >= 1) & (o["labels"] <= 3)).all()  # 0 is background
            assert ((o["masks"] >= 0) & (o["masks"] <= 1)).all()  # probabilities
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


def ship_target(size: int = 128) -> dict[str, torch.Tensor]:
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 10:24, 10:30] = 1
    return {"boxes": torch.tensor([[10.0, 10.0, 30.0, 24.0]]), "labels": torch.tensor([1]), "masks": masks}


@pytest.mark.parametrize("roi_pool", ["fpn", "groie"])
def test_instance_segmenter_trains_with_targets(roi_pool: str) -> None:
    trunk = load_task_model("tiny", "instance", classes=["ship"], random_weights=True).module.trunk
    net = build_task_model("instance", trunk, 2, tile_size=128,
                           head={"channels": 32, "roi_pool": roi_pool}).train()
    losses = net([torch.randn(3, 128, 128)], [ship_target()])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert net.trunk.backbone.layers[0][0].projection.weight.grad is not None
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_instance_pools_rois_from_levels_0_to_3_and_anchors_at_4_and_8_strides() -> None:
    net = load_task_model("tiny", "instance", classes=["ship"], random_weights=True).module
    heads = net.maskrcnn.roi_heads
    assert heads.box_roi_pool.featmap_names == heads.mask_roi_pool.featmap_names == ["0", "1", "2", "3"]
    anchors = net.maskrcnn.rpn.anchor_generator
    assert anchors.sizes == ((16, 32), (32, 64), (64, 128), (128, 256), (256, 512))
    assert anchors.num_anchors_per_location() == [6] * 5
    with pytest.raises(ValueError, match="groie"):
        build_task_model("instance", net.trunk, 2, tile_size=128, head={"roi_pool": "mean"})


def test_instance_checkpoint_round_trip(tmp_path: Path) -> None:
    first = load_task_model("tiny", "instance", classes=["ship", "harbour"], random_weights=True)
    assert first.module.maskrcnn.roi_heads.box_predictor.cls_score.out_features == 3  # + background
    out = tmp_path / "inst"
    save_checkpoint(first.module.state_dict(), first.config, out)
    again = load_task_model(out, "instance")
    assert again.weights == {"trunk": "checkpoint", "head": "checkpoint"}
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = first.module.predict(x)[0], again.module.predict(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
    four = load_task_model(out, "instance", in_chans=4)  # the stem under maskrcnn.backbone.body.
    assert four.module.trunk.backbone.layers[0][0].projection.weight.shape[1] == 4
    with pytest.raises(DvisUsageError, match="cannot detect"):
        load_task_model(out, "detect")
