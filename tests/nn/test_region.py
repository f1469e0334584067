"""Region pooling from every FPN level: the batched torchvision path against the pure reference."""

from __future__ import annotations

import pytest
import torch

from dynamicvis_cli.nn.heads.region import RegionPooler, region_features_reference


def _maps(side: int = 64, channels: int = 5, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, channels, side // s, side // s, generator=g) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize("boxes", [
    [[[3.0, 5.0, 40.0, 30.0]], [[0.0, 0.0, 64.0, 64.0], [10.5, 20.25, 12.0, 23.0]]],  # incl. a 1.5 px box
    [[[-8.0, 50.0, 20.0, 80.0]], []],  # partly outside the image; an image without boxes
])
def test_pooler_matches_the_reference(boxes: list[list[list[float]]]) -> None:
    fpn = _maps()
    per_image = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    fast = RegionPooler()(fpn, per_image)
    ref = region_features_reference(fpn, per_image)
    assert fast.shape == (sum(len(b) for b in boxes), 5)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_every_level_contributes() -> None:
    """A change on the coarsest level alone changes the region vector (not one level per box)."""
    fpn = _maps()
    boxes = [torch.tensor([[8.0, 8.0, 20.0, 20.0]]), torch.zeros(0, 4)]
    before = RegionPooler()(fpn, boxes)
    fpn[3] = fpn[3] + 1.0
    after = RegionPooler()(fpn, boxes)
    torch.testing.assert_close(after - before, torch.full_like(before, 0.25), rtol=0, atol=1e-5)


def test_region_classifier_gives_one_row_per_box() -> None:
    from dynamicvis_cli.checkpoints.load import build_model
    from dynamicvis_cli.checkpoints.registry import resolve
    from dynamicvis_cli.nn.tasks import build_task_model

    config, _ = resolve("tiny")
    config.fpn_channels = 16
    torch.manual_seed(0)
    net = build_task_model("region", build_model(config, scan_backend="chunked"), 3, tile_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = net(x, [torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]), torch.zeros(0, 4)])
        alone = net(x[:1], [torch.tensor([[1.0, 2.0, 30.0, 40.0]])])
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[:1], alone, rtol=1e-4, atol=1e-5)  # boxes do not see each other
