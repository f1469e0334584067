"""``dvis evaluate`` for every fine-tuned task: a checkpoint from ``dvis finetune`` (a few steps of
``tiny`` on real chips from ../shared/data) scored in a real subprocess; JSON on stdout, a table on
stderr, metrics in range and consistent. Bad input exits 2 before any work.

Finetune runs in-process (see tests/cli/test_finetune_cli.py); torch on one thread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_finetune_cli import _one_thread, cli, dvis, finetune  # noqa: F401 (fixture)
from tests.train.fixtures import (
    DUBAI_PALETTE,
    make_change,
    make_coco_crops,
    make_dubai_pairs,
    make_imagefolder,
)

pytestmark = pytest.mark.data


def evaluate(*args: object) -> tuple[dict[str, Any], str]:
    run = dvis("evaluate", *args, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout), run.stderr


def in_unit(*values: float) -> bool:
    return all(0.0 <= v <= 1.0 for v in values)


def test_classify_checkpoint_through_evaluate(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=2)
    finetune("--task", "classify", "--data", data, "-o", tmp_path / "run")
    report, table = evaluate("--task", "classify", "-m", tmp_path / "run", "--data", data, "--batch-size", 3,
                             "-o", tmp_path / "report.json")
    assert report["command"] == "evaluate" and report["task"] == "classify"
    assert report["random_weights"] is False and report["items"] == 4
    m = report["metrics"]
    assert in_unit(m["accuracy"], m["precision"], m["recall"], m["f1"])
    assert sum(v["support"] for v in m["per_class"].values()) == 4 == m["count"]
    assert json.loads((tmp_path / "report.json").read_text())["metrics"] == m
    assert "accuracy" in table and "per class" in table and "water" in table  # the stderr table


def test_segment_and_change_checkpoints_through_evaluate(tmp_path: Path) -> None:
    seg = make_dubai_pairs(tmp_path / "seg", n=2)
    palette = tmp_path / "palette.json"
    palette.write_text(json.dumps(DUBAI_PALETTE))
    finetune("--task", "segment", "--data", seg, "--palette", palette, "-o", tmp_path / "seg_run")
    report, _ = evaluate("--task", "segment", "-m", tmp_path / "seg_run", "--data", seg, "--palette", palette,
                         "--target-class", "building", "-q")
    m = report["metrics"]
    assert in_unit(m["miou"], m["accuracy"], m["target_iou"], m["target_f1"])
    assert m["target_class"] == "building"
    assert m["count"] == sum(v["support"] for v in m["per_class"].values()) > 0
    assert m["target_iou"] == m["per_class"]["building"]["iou"]

    ch = make_change(tmp_path / "change", names=("test_102_0512_0000", "test_55_0256_0000"))
    finetune("--task", "change", "--data", ch, "-o", tmp_path / "ch_run")
    report, table = evaluate("--task", "change", "-m", tmp_path / "ch_run", "--data", ch)
    m = report["metrics"]
    assert report["classes"] == ["unchanged", "changed"] and m["target_class"] == "changed"
    assert in_unit(m["precision"], m["recall"], m["f1"], m["iou"], m["miou"])
    assert m["count"] == 2 * 64 * 64 and m["iou"] <= m["f1"] + 1e-12  # IoU never exceeds F1
    assert "f1" in table


def test_detect_and_instance_checkpoints_through_evaluate(tmp_path: Path) -> None:
    coco = make_coco_crops(tmp_path / "data", n=2, size=128)
    finetune("--task", "detect", "--data", coco, "-o", tmp_path / "det", tile=128)
    report, table = evaluate("--task", "detect", "-m", tmp_path / "det", "--data", coco)
    m = report["metrics"]
    assert report["items"] == 2 and m["targets"] > 0
    for key in ("ap", "ap50", "ap75", "ar100"):
        assert in_unit(m[key]), key
    assert m["ap_small"] == -1 or in_unit(m["ap_small"])
    assert m["ap50"] >= m["ap75"] and m["ap50"] >= m["ap"]
    assert "ap50" in table
    finetune("--task", "instance", "--data", coco, "-o", tmp_path / "inst", tile=128)
    report, _ = evaluate("--task", "instance", "-m", tmp_path / "inst", "--data", coco, "-q")
    m = report["metrics"]
    assert set(m) >= {"box", "mask", "ap", "ap50", "ap75", "ap_small", "box_ap"}
    assert in_unit(m["mask"]["ap"], m["box"]["ap"]) and m["ap"] == m["mask"]["ap"]


def test_bad_input_exits_2_before_any_work(tmp_path: Path) -> None:
    code, _, err = cli("evaluate", "--task", "classify", "-m", "tiny")
    assert code == 2 and "needs --data" in err
    code, _, err = cli("evaluate", "--task", "segmentation", "--data", tmp_path)
    assert code == 2 and "choose one of" in err
    code, _, err = cli("evaluate", "--task", "change", "-m", "tiny", "--data", tmp_path / "missing")
    assert code == 2 and "missing" in err
    # a backbone/architecture is not a fine-tuned model: refused unless --random-weights
    data = make_imagefolder(tmp_path / "data", ("water", "vegetation"), per_class=1)
    code, _, err = cli("evaluate", "--task", "classify", "-m", "tiny", "--data", data)
    assert code == 2 and "not a fine-tuned classify model" in err
    (data / "water" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    code, out, err = cli("evaluate", "--task", "classify", "-m", "tiny", "--random-weights", "--data", data)
    assert code == 2 and "broken.png" in err and out == ""
