"""scripts/release_model.py: a run becomes a model folder dvis loads; bad runs write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dynamicvis_cli.checkpoints.task import load_task_model

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "tiny.neon-trees"


def _float32_run(dest: Path) -> Path:
    """A run folder as dvis finetune leaves it (float32 weights, config) from a released model."""
    dest.mkdir()
    weights = load_file(str(MODEL / "model.safetensors"))
    save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
              str(dest / "model.safetensors"))
    (dest / "config.json").write_text((MODEL / "config.json").read_text())
    return dest


def _release(*args: object) -> subprocess.CompletedProcess[str]:
    script = REPO / "scripts" / "release_model.py"
    return subprocess.run([sys.executable, str(script), *map(str, args)],
                          capture_output=True, text=True, check=False)


def test_release_writes_fp16_weights_and_config_and_keeps_the_card(tmp_path: Path) -> None:
    run = _float32_run(tmp_path / "run")
    dest = tmp_path / "tiny.again"
    dest.mkdir()
    (dest / "MODEL_CARD.md").write_text("hand-written\n")
    r = _release(run, dest)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["out"] == str(dest)
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    assert (dest / "MODEL_CARD.md").read_text() == "hand-written\n"
    before = load_file(str(run / "model.safetensors"))
    after = load_file(str(dest / "model.safetensors"))
    assert before.keys() == after.keys()
    assert {v.dtype for v in before.values() if v.is_floating_point()} == {torch.float32}
    assert {v.dtype for v in after.values() if v.is_floating_point()} == {torch.float16}
    halved = {k: v.half() if v.is_floating_point() else v for k, v in before.items()}
    assert all(torch.equal(halved[k], after[k]) for k in before)
    config = json.loads((dest / "config.json").read_text())
    assert config["provenance"]["released"] == "tiny.again (fp16 weights of run)"
    loaded = load_task_model(str(dest), config["task"], device=torch.device("cpu"))
    assert not loaded.random and list(loaded.config.classes) == config["classes"]


def test_release_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    r = _release(run, tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {run}: not a dvis run folder (no model.safetensors)"
    assert not (tmp_path / "out").exists()
    (run / "model.safetensors").write_bytes(b"not safetensors")
    r = _release(run, tmp_path / "out")
    assert r.returncode == 2 and f"error: {run}: unreadable run folder" in r.stderr
    assert not (tmp_path / "out").exists()
