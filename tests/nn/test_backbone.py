"""Backbone behaviour beyond the authors' code: sizes, bands, noise, budget, dense, gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from dynamicvis_cli.checkpoints.load import build_model, count_parameters
from dynamicvis_cli.checkpoints.registry import arch_config
from dynamicvis_cli.nn.adapt import adapt_input_conv
from dynamicvis_cli.nn.backbone import BackboneSpec, DynamicVisBackbone, resize_pos_embed
from dynamicvis_cli.nn.stim import gumbel_sigma, num_selected

TINY = BackboneSpec(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), img_size=128)


def tiny(seed: int = 0, **kwargs: Any) -> DynamicVisBackbone:
    torch.manual_seed(seed)
    model = DynamicVisBackbone(TINY, **kwargs)
    with torch.no_grad():  # a non-zero positional embedding, so resizing it matters
        model.pos_embed.normal_(std=0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["base", "large"])
def test_keys_shapes_and_counts_match_the_manifests(name: str, manifests: dict[str, Any]) -> None:
    manifest = manifests[name]
    with torch.device("meta"):
        model = build_model(arch_config(name))
    ours = {f"backbone.{k}": list(v.shape) for k, v in model.backbone.state_dict().items()}
    theirs = {k: v for k, v in manifest["keys"].items() if k.startswith("backbone.")}
    assert ours == theirs
    assert count_parameters(model.backbone) == manifest["parameters"]["backbone"]
    assert count_parameters(model.fpn) == manifest["parameters"]["neck"]


@pytest.mark.parametrize(("height", "width"), [(128, 128), (100, 164), (97, 61), (33, 250)])
def test_any_input_size(height: int, width: int) -> None:
    model = tiny()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, height, width))
    h, w = height, width
    for out, stride, dim in zip(outs, (4, 2, 2, 2), TINY.dims):
        k = 7 if stride == 4 else 3
        h, w = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
        assert out.shape == (1, dim, h, w)
        assert torch.isfinite(out).all()


def test_pos_embed_resize_is_identity_at_build_size_and_bicubic_elsewhere() -> None:
    pe = torch.randn(1, 64, 5)
    assert resize_pos_embed(pe, 8, 8) is pe
    out = resize_pos_embed(pe, 12, 6)
    grid = pe.reshape(1, 8, 8, 5).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(12, 6), mode="bicubic", align_corners=False)
    assert torch.allclose(out, want.permute(0, 2, 3, 1).reshape(1, 72, 5))


def test_other_size_equals_a_model_built_for_that_size() -> None:
    """Running at 160 px = the authors' recipe: build for 160, resize pos_embed at load."""
    small = tiny(seed=3)
    spec160 = BackboneSpec(dims=TINY.dims, depths=TINY.depths, img_size=160)
    big = DynamicVisBackbone(spec160).eval()
    state = small.state_dict()
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], 40, 40)
    big.load_state_dict(state)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        for a, b in zip(small(x), big(x)):
            assert torch.allclose(a, b, atol=1e-6)


def test_global_tokens_follow_the_rows_of_the_grid() -> None:
    model = tiny()
    seen = []
    hook = model.layers[0][1][0].spatial_mamba_mixer.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].shape[1])
    )
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 160))       # stage-0 grid 24 x 40: 960 tokens, k = 120
    hook.remove()
    assert seen == [24 + 960 // 8]


def test_four_band_1000x700_input_runs() -> None:
    spec = BackboneSpec(dims=(96, 192, 384, 768), depths=(2, 4, 16, 4), img_size=512, in_chans=4)
    model = DynamicVisBackbone(spec).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 4, 1000, 700))
    assert [tuple(o.shape[-2:]) for o in outs] == [(250, 175), (125, 88), (63, 44), (32, 22)]


class TestAdaptInputConv:
    w = torch.randn(8, 3, 7, 7)

    def test_one_band_is_the_sum(self) -> None:
        assert torch.allclose(adapt_input_conv(self.w, 1), self.w.sum(1, keepdim=True))

    @pytest.mark.parametrize("bands", [2, 4, 13])
    def test_n_copies_of_a_grey_image_respond_like_it(self, bands: int) -> None:
        grey = torch.randn(1, 1, 21, 21)
        rgb = F.conv2d(grey.expand(1, 3, 21, 21), self.w)
        many = F.conv2d(grey.expand(1, bands, 21, 21), adapt_input_conv(self.w, bands))
        assert torch.allclose(rgb, many, atol=1e-4)

    def test_rgb_band_positions(self) -> None:
        image = torch.randn(1, 13, 15, 15)
        w13 = adapt_input_conv(self.w, 13, rgb_bands=(3, 2, 1))
        want = F.conv2d(image[:, [3, 2, 1]], self.w)
        assert torch.allclose(F.conv2d(image, w13), want, atol=1e-5)

    @pytest.mark.parametrize("bad", [(0, 1), (0, 0, 1), (0, 1, 13)])
    def test_bad_rgb_bands(self, bad: tuple[int, ...]) -> None:
        with pytest.raises(ValueError, match="rgb_bands"):
            adapt_input_conv(self.w, 13, rgb_bands=bad)


class TestRouterNoise:
    def test_schedule(self) -> None:
        assert gumbel_sigma("fixed", None) == 0.1
        assert gumbel_sigma("decay", 0.0) == pytest.approx(0.1)
        assert gumbel_sigma("decay", 0.5) == pytest.approx(0.05005)
        assert gumbel_sigma("decay", 1.0) == pytest.approx(1e-4)
        assert gumbel_sigma("off", 0.3) == 0.0
        with pytest.raises(ValueError, match="progress"):
            gumbel_sigma("decay", None)

    def test_eval_is_deterministic_and_training_is_noisy(self) -> None:
        model = tiny(gumbel_schedule="decay")
        x = torch.randn(2, 3, 128, 128)

        def selections(progress: float | None) -> list[torch.Tensor]:
            rec: list[dict[str, torch.Tensor]] = []
            with torch.no_grad():
                model(x, progress=progress, record=rec)
            return [r["selected"] for r in rec]

        model.eval()
        clean = selections(None)
        assert all(torch.equal(a, b) for a, b in zip(clean, selections(None)))
        model.train()
        torch.manual_seed(1)
        noisy = selections(0.0)
        assert not all(torch.equal(a, b) for a, b in zip(clean, noisy))

    def test_noise_vanishes_when_switched_off(self) -> None:
        model = tiny(gumbel_schedule="off")
        x = torch.randn(1, 3, 128, 128)
        with torch.no_grad():
            want = model.eval()(x)
            got = model.train()(x, progress=0.2)
        assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_token_budget_caps_every_unit() -> None:
    model = tiny(token_budget=10)
    rec: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 128, 128), record=rec)
    assert [r["selected"].shape[1] for r in rec] == [10, 10, 10, 10, 10]
    assert outs[-1].shape == (1, 64, 4, 4)
    assert num_selected(1024, 8, None) == 128 and num_selected(1024, 8, 50) == 50


def test_dense_variant_scans_every_token_in_order() -> None:
    model = tiny(dense=True)
    seen = []
    hook = model.layers[0][1][0].spatial_mamba_mixer.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].shape[1])
    )
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        dense = model(x)
        model.dense = False
        sparse = model(x)
    hook.remove()
    assert seen == [32 + 1024, 32 + 128]
    assert not torch.allclose(dense[-1], sparse[-1])


def test_gradients_reach_every_parameter() -> None:
    model = tiny().train()
    model.set_scan_backend("auto")  # chunked when a gradient is needed
    outs = model(torch.randn(2, 3, 64, 96), progress=0.5)
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
