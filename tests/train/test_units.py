"""The pieces of training on their own: config, schedule, metrics, losses, hooks, optimiser state."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamicvis_cli.checkpoints.task import load_task_model
from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.train.checkpoint import _join_optimizer, _split_optimizer
from dynamicvis_cli.train.config import TrainConfig, from_mapping, load_yaml, parse_sets, resolve
from dynamicvis_cli.train.hooks import ProgressFeed, TokenDrop, freeze_stages
from dynamicvis_cli.train.losses import ce_dice, dice_loss
from dynamicvis_cli.train.metrics import ConfusionMatrix, average_precision
from dynamicvis_cli.train.optim import lr_factor, param_groups


def test_yaml_then_overrides_then_task_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: instance\nbatch_size: 4\naugment:\n  scale: [0.1, 2.0]\n  colour: 0\n")
    cfg = load_yaml(path)
    cfg = from_mapping(parse_sets(["accum=2", "augment.hflip=false"]), base=cfg)
    cfg = resolve(cfg, model_tile=512, model_mean=[0.5] * 3, model_std=[0.2] * 3, in_chans=4,
                  require_io=False)
    assert (cfg.task, cfg.batch_size, cfg.accum, cfg.lr, cfg.freeze_stages) == ("instance", 4, 2, 1e-4, 1)
    assert cfg.augment.scale == (0.1, 2.0) and cfg.augment.hflip is False and cfg.augment.vflip is True
    assert cfg.bands == [1, 2, 3, 4] and cfg.mean == [0.5] * 4 and cfg.tile_size == 512
    with pytest.raises(DvisUsageError, match="unknown config key 'btach_size'"):
        from_mapping({"btach_size": 3})
    with pytest.raises(DvisUsageError, match="unknown augment key 'flip'"):
        from_mapping({"augment": {"flip": True}})
    with pytest.raises(DvisUsageError, match="token_drop"):
        resolve(TrainConfig(token_drop=1.5), model_tile=64, model_mean=[0] * 3, model_std=[1] * 3, in_chans=3,
                require_io=False)


def test_warmup_then_cosine() -> None:
    f = [lr_factor(s, 100, 10, 0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)
    assert f[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_confusion_matrix_scores_and_ignore() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 255]))
    s = cm.scores(["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(4 / 5) and s["count"] == 5
    assert s["per_class"]["a"]["iou"] == pytest.approx(1 / 2)
    assert s["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def test_average_precision() -> None:
    target = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": np.array([0, 0])}]
    perfect = [{"boxes": target[0]["boxes"], "scores": np.array([0.9, 0.8]), "labels": np.array([0, 0])}]
    assert average_precision(perfect, target, 1)["map"] == pytest.approx(1.0)
    # a better-scored false positive: precisions 1/2 then 2/3 at recalls 1/2 and 1; the envelope
    # (all-point interpolation) takes 2/3 for both halves
    noisy = [{"boxes": np.array([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]]),
              "scores": np.array([0.95, 0.9, 0.8]), "labels": np.array([0, 0, 0])}]
    r = average_precision(noisy, target, 1)
    assert r["map"] == pytest.approx(2 / 3) and r["recall"] == 1.0


def test_dice_is_zero_for_a_perfect_prediction_and_ignores_255() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = torch.nn.functional.one_hot(target.clamp(0, 1), 2).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-3)
    loss, parts = ce_dice(torch.zeros(1, 2, 2, 2), target, 3.0)
    assert loss.item() == pytest.approx(parts["ce"].item() + 3 * parts["dice"].item())


def test_progress_reaches_the_router_and_frozen_stages_get_no_gradient() -> None:
    net = load_task_model("tiny", "classify", classes=["a", "b"], random_weights=True).module.train()
    backbone = net.trunk.backbone
    backbone.gumbel_schedule = "decay"
    feed = ProgressFeed(backbone)
    seen: list[float] = []
    backbone.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("progress")), with_kwargs=True)
    feed.value = 0.25
    frozen = freeze_stages(backbone, 1)
    assert frozen and all(n.startswith(("layers.0.", "pos_embed")) for n in frozen)
    net(torch.randn(2, 3, 64, 64)).sum().backward()
    assert seen == [0.25]
    assert all(p.grad is None for n, p in backbone.named_parameters() if n in frozen)
    assert backbone.layers[1][0].projection.weight.grad is not None
    decayed, plain = param_groups(net, 0.05)
    assert not any(p.ndim <= 1 for p in decayed["params"])  # type: ignore[attr-defined]


def test_token_drop_only_in_training() -> None:
    net = load_task_model("tiny", "classify", classes=["a", "b"], random_weights=True).module
    TokenDrop(net.trunk.backbone, 0.5)
    x = torch.randn(1, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        stages = net.trunk.backbone(x)
        net.train()
        torch.manual_seed(0)
        dropped = net.trunk.backbone(x)
    zero = (dropped[0] == 0).all(dim=1).float().mean().item()
    assert 0.3 < zero < 0.7 and not torch.equal(stages[0], dropped[0])


def test_optimizer_state_round_trips_without_pickle() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = _split_optimizer(opt.state_dict())
    import json

    meta = json.loads(json.dumps(meta))
    again = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    again.load_state_dict(_join_optimizer(tensors, meta))
    a, b = opt.state_dict(), again.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name in a["state"][k]:
            assert torch.equal(a["state"][k][name], b["state"][k][name])


def test_a_classify_checkpoint_starts_a_detector_with_its_backbone(tmp_path: Path) -> None:
    from dynamicvis_cli.checkpoints.store import save_checkpoint
    from dynamicvis_cli.train.model import build_for_training

    loaded = load_task_model("tiny", "classify", classes=["a", "b"], random_weights=True)
    save_checkpoint(loaded.module.state_dict(), loaded.config, tmp_path / "cls")
    net, config, weights = build_for_training(str(tmp_path / "cls"), "detect", ["ship"], in_chans=3, tile_size=64)
    assert weights == {"trunk": "checkpoint", "head": "random", "fpn": "random"} and config.fpn_channels == 32
    for k, v in loaded.module.trunk.backbone.state_dict().items():
        assert torch.equal(net.trunk.backbone.state_dict()[k], v), k
    same, _, w = build_for_training(str(tmp_path / "cls"), "classify", ["a", "b"], in_chans=3, tile_size=64)
    assert w == {"trunk": "checkpoint", "head": "checkpoint"}
