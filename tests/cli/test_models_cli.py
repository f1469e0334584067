"""``dvis`` as a user runs it: real subprocesses, exit codes, stdout JSON, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def dvis(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamicvis_cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=300,
    )


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom dynamicvis_cli.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'dvis --help imported torch'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "models" in run.stdout
    version = dvis("--version")
    assert version.returncode == 0 and version.stdout.startswith("dvis ")


def test_show_versions() -> None:
    run = dvis("--show-versions")
    assert run.returncode == 0
    assert "torch:" in run.stdout and "dynamicvis-cli:" in run.stdout


def test_models_list_json() -> None:
    run = dvis("models", "list", "--json")
    assert run.returncode == 0, run.stderr
    names = [m["name"] for m in json.loads(run.stdout)["models"]]
    assert names[:4] == ["base", "large", "small", "tiny"]
    only = json.loads(dvis("models", "list", "l*", "--json").stdout)["models"]
    assert [m["name"] for m in only] == ["large"]


@pytest.mark.parametrize(("name", "backbone"), [("base", 36_745_536), ("large", 91_242_240)])
def test_models_show_parameter_counts(name: str, backbone: int) -> None:
    run = dvis("models", "show", name, "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["parameters"]["backbone"] == backbone
    assert info["bands"] == ["red", "green", "blue"]
    text = dvis("models", "show", name)
    assert f"backbone {backbone:,}" in text.stdout


def test_unknown_model_is_a_usage_error() -> None:
    run = dvis("models", "show", "bsae")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "unknown model 'bsae'" in run.stderr and "base" in run.stderr


def test_import_then_show(official_small_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-ck"
    run = dvis("models", "import", str(official_small_a / "weights.safetensors"), "-o", str(out))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["arch"] == "tiny" and summary["backbone_parameters"] == 151_312
    assert load_file(out / "model.safetensors")["backbone.pos_embed"].shape == (1, 1024, 16)
    show = json.loads(dvis("models", "show", str(out), "--json").stdout)
    assert show["parameters"] == {"backbone": 151_312, "fpn": 42_240, "total": 193_552}
    assert show["source"]["source"] == "weights.safetensors"

    again = dvis("models", "import", str(official_small_a / "weights.safetensors"), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        ("missing", 2, "does not exist"),
        ("corrupt", 1, "cannot be read as a weights-only torch file"),
        ("foreign", 1, "no 'backbone.' keys"),
    ],
)
def test_import_bad_input(tmp_path: Path, setup: str, code: int, message: str) -> None:
    src = tmp_path / "in.pth"
    if setup == "corrupt":
        src.write_bytes(b"PK\x03\x04 truncated")
    elif setup == "foreign":
        torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, src)
    out = tmp_path / "out"
    run = dvis("models", "import", str(src), "-o", str(out))
    assert run.returncode == code, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    src = tmp_path / "in.pth"
    src.write_bytes(b"junk")
    run = dvis("--debug", "models", "import", str(src), "-o", str(tmp_path / "o"))
    assert run.returncode == 1 and "Traceback" in run.stderr
