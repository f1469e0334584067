"""The authors' function, pinned by ../shared/reference/official_small_a: reproduced exactly.

The fixture's weights go through the same importer as the authors' checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynamicvis_cli.checkpoints.import_authors import convert, read_source
from dynamicvis_cli.checkpoints.load import build_model
from dynamicvis_cli.nn.model import DynamicVis

TOL = {torch.float32: 2e-5, torch.float64: 1e-7}
SUFFIX = {torch.float32: "float32", torch.float64: "float64"}


@pytest.fixture(scope="module")
def imported(official_small_a: Path) -> tuple[DynamicVis, dict[str, torch.Tensor], torch.Tensor]:
    conv = convert(read_source(official_small_a / "weights.safetensors"), source=official_small_a)
    model = build_model(conv.config)
    model.load_state_dict(conv.state_dict, strict=True)
    expected = load_file(official_small_a / "expected.safetensors")
    x = load_file(official_small_a / "input.safetensors")["x"]
    return model.eval(), expected, x


def test_config_read_off_the_weights(official_small_a: Path, imported) -> None:
    ref = json.loads((official_small_a / "config.json").read_text())
    model, _, _ = imported
    spec = model.spec
    assert list(spec.dims) == ref["backbone"]["c_embed_dims"]
    assert list(spec.depths) == ref["backbone"]["num_layers"]
    assert spec.img_size == ref["backbone"]["img_size"]
    assert list(spec.keep_divisors) == ref["backbone"]["spatial_token_keep_ratios"]
    assert sum(p.numel() for p in model.backbone.parameters()) == ref["parameters"]["backbone"]
    assert sum(p.numel() for p in model.fpn.parameters()) == ref["parameters"]["neck"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["auto", "chunked", "reference"])
def test_stage_and_fpn_maps_match_the_authors(imported, dtype: torch.dtype, backend: str) -> None:
    model, expected, x = imported
    model = model.to(dtype)
    model.backbone.set_scan_backend(backend)
    with torch.no_grad():
        out = model(x.to(dtype))
    suffix = SUFFIX[dtype]
    names = [f"stage{i}" for i in range(4)] + [f"fpn{i}" for i in range(5)]
    for name, got in zip(names, out.stages + out.fpn):
        want = expected[f"{name}.{suffix}"]
        assert got.shape == want.shape, name
        err = (got - want).abs().max() / want.abs().max()
        assert err <= TOL[dtype], f"{name}: relative error {err:.3g}"
    model.float()
    model.backbone.set_scan_backend("auto")


def test_routing_selects_the_same_tokens_in_the_same_order(imported) -> None:
    model, expected, x = imported
    model = model.double()
    record: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        model.backbone(x.double(), record=record)
    assert len(record) == 5
    for n, r in enumerate(record):
        assert torch.equal(r["selected"], expected[f"route{n}.selected"]), f"route{n}"
        want = expected[f"route{n}.logits.float64"]
        assert (r["logits"] - want).abs().max() <= 1e-9 * want.abs().max()
    model.float()
