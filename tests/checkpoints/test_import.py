"""The authors' checkpoints → dvis checkpoints, and loading them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dynamicvis_cli.checkpoints.config import ModelConfig
from dynamicvis_cli.checkpoints.import_authors import convert, import_checkpoint, read_source
from dynamicvis_cli.checkpoints.load import load_model
from dynamicvis_cli.checkpoints.store import read_config
from dynamicvis_cli.errors import CheckpointError, DvisUsageError, OutputExistsError, UnknownModelError


def authors_pth(official_small_a: Path, tmp_path: Path, **extra: torch.Tensor) -> Path:
    """The fixture's weights as the authors ship them: mmengine dict, DDP prefix, a head."""
    weights = load_file(official_small_a / "weights.safetensors")
    state = {f"module.{k}": v for k, v in weights.items()}
    state["module.head.fc.weight"] = torch.zeros(10, 64)
    state.update(extra)
    path = tmp_path / "epoch_1.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": state}, path)
    return path


def fixture_error(model: torch.nn.Module, ref: Path) -> float:
    x = load_file(ref / "input.safetensors")["x"]
    expected = load_file(ref / "expected.safetensors")
    with torch.no_grad():
        out = model(x)
    names = [f"stage{i}" for i in range(4)] + [f"fpn{i}" for i in range(5)]
    return max(
        float((got - expected[f"{n}.float32"]).abs().max() / expected[f"{n}.float32"].abs().max())
        for n, got in zip(names, out.stages + out.fpn)
    )


@pytest.mark.parametrize("as_file", [False, True])
def test_import_pth_then_load_reproduces_the_fixture(official_small_a: Path, tmp_path: Path, as_file: bool) -> None:
    src = authors_pth(official_small_a, tmp_path)
    out = tmp_path / ("tiny.safetensors" if as_file else "tiny")
    summary = import_checkpoint(src, out)
    assert summary["arch"] == "tiny"
    assert summary["fpn_from"] == "pre_neck."
    assert summary["ignored_examples"] == ["head.fc.weight"]
    config = read_config(out)
    assert config.provenance["source"] == "epoch_1.pth"
    model = load_model(out)
    assert fixture_error(model, official_small_a) <= 2e-5
    assert not list(tmp_path.glob(".*tmp*"))


def test_fp16_checkpoint_loads(official_small_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "half"
    import_checkpoint(official_small_a / "weights.safetensors", out, fp16=True)
    assert load_file(out / "model.safetensors")["backbone.pos_embed"].dtype == torch.float16
    assert fixture_error(load_model(out), official_small_a) < 1e-2


def test_refuses_to_overwrite(official_small_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    import_checkpoint(official_small_a / "weights.safetensors", out)
    with pytest.raises(OutputExistsError):
        import_checkpoint(official_small_a / "weights.safetensors", out)
    import_checkpoint(official_small_a / "weights.safetensors", out, overwrite=True)
    assert read_config(out).arch == "tiny"


def test_unexpected_backbone_key_is_named(official_small_a: Path, tmp_path: Path) -> None:
    src = authors_pth(official_small_a, tmp_path, **{"module.backbone.layers.0.1.0.extra": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): backbone.layers.0.1.0.extra"):
        import_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_shape_is_named(official_small_a: Path, tmp_path: Path) -> None:
    weights = load_file(official_small_a / "weights.safetensors")
    weights["backbone.layers.1.1.0.spatial_mamba_mixer.mamba_layer.D"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match="wrong shape"):
        convert(weights)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (b"not a zip", ".pth", "weights-only torch file"),
        (b"\x00" * 16, ".safetensors", "safetensors"),
        (b"{}", ".json", "unknown checkpoint type"),
    ],
)
def test_unreadable_sources(tmp_path: Path, content: bytes, suffix: str, message: str) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        read_source(bad)
    assert str(bad) in str(info.value)


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> Any:
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_source(path)


def test_not_a_dynamicvis_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no 'backbone.' keys"):
        convert({"encoder.weight": torch.zeros(2)})


@pytest.mark.parametrize("name", ["base", "large"])
def test_full_size_authors_layout_from_manifest(name: str, manifests: dict[str, Any], tmp_path: Path) -> None:
    """A checkpoint with every key and shape of the paper's model imports as that architecture."""
    keys = manifests[name]["keys"]
    state = {k: torch.zeros(shape) for k, shape in keys.items()}
    conv = convert(state)
    assert conv.config.arch == name
    assert conv.config.fpn_channels == 256
    assert conv.config.backbone.img_size == 512
    assert sum(v.numel() for k, v in conv.state_dict.items() if k.startswith("backbone.")) == \
        manifests[name]["parameters"]["backbone"]


def test_load_model_rules(official_small_a: Path, tmp_path: Path) -> None:
    with pytest.raises(DvisUsageError, match="random"):
        load_model("tiny")
    with pytest.raises(UnknownModelError, match="Did you mean: tiny"):
        load_model("tiyn")
    model = load_model("tiny", random_weights=True, in_chans=4, token_budget=7)
    assert model.config.token_budget == 7
    assert model.backbone.layers[0][0].projection.weight.shape[1] == 4
    out = tmp_path / "ck"
    import_checkpoint(official_small_a / "weights.safetensors", out)
    four = load_model(out, in_chans=13, rgb_bands=(3, 2, 1), with_fpn=False)
    rgb = load_model(out, with_fpn=False)
    x = torch.randn(1, 13, 128, 128)
    with torch.no_grad():
        a, b = four(x).stages[-1], rgb(x[:, [3, 2, 1]]).stages[-1]
    assert torch.allclose(a, b, atol=1e-5)
    assert four.config.provenance["input_adapted_from_bands"] == 3


def test_config_round_trip_and_errors(tmp_path: Path) -> None:
    from dynamicvis_cli.checkpoints.registry import arch_config

    config = arch_config("base")
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(CheckpointError, match="unknown config fields: colour"):
        ModelConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(CheckpointError, match="newer"):
        ModelConfig.from_dict({**config.to_dict(), "format_version": 99})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ModelConfig.from_json("{")
