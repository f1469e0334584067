"""``dvis finetune`` on real data from ../shared/data, and the checkpoint it leaves run through the
matching inference command in a real subprocess.

``dvis finetune`` itself runs in-process through the CLI's ``main`` (argument parsing, error
mapping and exit codes included) to spare a torch import per call; torch runs on one thread (see
tests/train/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.train.fixtures import (
    DUBAI_PALETTE,
    make_change,
    make_coco_crops,
    make_dubai_pairs,
    make_imagefolder,
)

pytestmark = pytest.mark.data
SHORT = ["-m", "tiny", "--steps", 2, "--batch-size", 2, "--device", "cpu", "-q"]


def dvis(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see tests/train/conftest.py
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "dynamicvis_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*args: object) -> tuple[int, str, str]:
    """Run ``dvis ARGS`` in this process: (exit code, stdout, stderr)."""
    from dynamicvis_cli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def finetune(*args: object, tile: int = 64) -> dict:
    code, out, err = cli("finetune", *args, *SHORT, "--tile-size", tile)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["command"] == "finetune" and summary["steps"] == 2
    return summary


def test_classify_checkpoint_runs_through_dvis_classify(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=2)
    run_dir = tmp_path / "run"
    finetune("--task", "classify", "--data", data, "-o", run_dir)
    for name in ("config.json", "model.safetensors", "log.jsonl", "log.csv", "train.yaml", "summary.json"):
        assert (run_dir / name).is_file(), name
    ckpt = run_dir / "checkpoints" / "step-0000002"
    assert (ckpt / "optimizer.safetensors").is_file() and (ckpt / "trainer.json").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "classify" and config["classes"] == ["vegetation", "water"]
    assert config["tile_size"] == 64 and len(config["mean"]) == 3
    assert config["bands"] == ["red", "green", "blue"]
    out = tmp_path / "labels.json"
    run = dvis("classify", *sorted((data / "water").glob("*.png")), "-o", out, "-m", run_dir, "-q")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["random_weights"] is False and summary["classes"] == ["vegetation", "water"]
    assert {r["class"] for r in json.loads(out.read_text())} <= {"vegetation", "water"}
    # the periodic checkpoint is a checkpoint too
    from dynamicvis_cli.checkpoints.task import load_task_model

    assert load_task_model(ckpt, "classify").weights == {"trunk": "checkpoint", "head": "checkpoint"}


def test_segment_and_change_checkpoints_run_through_inference(tmp_path: Path) -> None:
    seg_data = make_dubai_pairs(tmp_path / "seg", n=2)
    palette = tmp_path / "palette.json"
    palette.write_text(json.dumps(DUBAI_PALETTE))
    finetune("--task", "segment", "--data", seg_data, "--palette", palette, "-o", tmp_path / "seg_run")
    run = dvis("segment", seg_data / "images" / "chip0.png", "-o", tmp_path / "seg.tif",
               "-m", tmp_path / "seg_run", "-q")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["classes"][:2] == ["building", "land"]

    ch_data = make_change(tmp_path / "change", names=("test_102_0512_0000", "test_55_0256_0000"))
    finetune("--task", "change", "--data", ch_data, "-o", tmp_path / "ch_run")
    a, b = ch_data / "A" / "test_102_0512_0000.png", ch_data / "B" / "test_102_0512_0000.png"
    run = dvis("change", a, b, "-o", tmp_path / "change.tif", "-m", tmp_path / "ch_run", "-q")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["classes"] == ["unchanged", "changed"]


def test_detect_and_instance_checkpoints_run_through_dvis_detect(tmp_path: Path) -> None:
    coco = make_coco_crops(tmp_path / "data", n=2, size=128)
    # 128 px: at 64 px the stride-64 FPN level is 1 x 1 and FCOS's GroupNorm refuses a batch of one
    finetune("--task", "detect", "--data", coco, "-o", tmp_path / "run", tile=128)
    out = tmp_path / "boxes.geojson"
    run = dvis("detect", coco.parent / "images" / "crop0.png", "-o", out, "-m", tmp_path / "run",
               "--pixel-coords", "-q")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["classes"][0] == "airplane" and out.is_file()
    # instance segmentation: the same data (polygons), through dvis detect --masks
    finetune("--task", "instance", "--data", coco, "-o", tmp_path / "inst", tile=128)
    run = dvis("detect", coco.parent / "images" / "crop0.png", "-o", tmp_path / "inst.geojson", "-m",
               tmp_path / "inst", "--masks", "--pixel-coords", "-q")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["task"] == "instance"


def test_yaml_config_flag_overrides_and_print_config(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"task": "segment", "lr": 0.01, "batch_size": 16,
                                   "augment": {"scale": [0.5, 2]}, "palette": DUBAI_PALETTE}))
    code, out, err = cli("finetune", "-c", cfg, "--lr", "0.002", "--set", "augment.rot90=false", "-m", "tiny",
                         "--print-config")
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["task"] == "segment" and resolved["lr"] == 0.002 and resolved["batch_size"] == 16
    assert resolved["augment"]["scale"] == [0.5, 2.0] and resolved["augment"]["rot90"] is False
    assert resolved["tile_size"] == 128 and resolved["freeze_stages"] == 0 and resolved["epochs"] == 50
    code, _, err = cli("finetune", "-c", cfg, "--set", "learning_rate=1", "--print-config")
    assert code == 2 and "unknown config key 'learning_rate'" in err


def test_bad_data_is_reported_before_training_and_writes_nothing(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=1)
    (data / "water" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    run = dvis("finetune", "--task", "classify", "--data", data, "-o", tmp_path / "run", *SHORT,
               "--tile-size", 64)
    assert run.returncode == 2  # a real process: exit code and a one-line message naming the file
    assert "broken.png" in run.stderr and run.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("finetune", "--task", "change", "--data", empty, "-o", tmp_path / "run", *SHORT)
    assert code == 2 and "no change dataset layout" in err
    code, _, err = cli("finetune", "--task", "classify", "--data", data, "-o", tmp_path / "run",
                       "--batch-size", 3, "--accum", 2, "-m", "tiny", "--device", "cpu", "-q")
    assert code == 2 and "broken.png" in err
