"""Honest overfit tests: a short run on a handful of real images from ../shared/data drives the
loss down, and the saved checkpoint, loaded as inference loads it, then fits those images.

Tiny architecture from random weights, no augmentation, router noise off, one thread (see
conftest.py); each run takes seconds to tens of seconds on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dynamicvis_cli.data.augment import AugmentConfig
from dynamicvis_cli.train.config import TrainConfig
from dynamicvis_cli.train.loop import fit
from dynamicvis_cli.train.validate import evaluate_checkpoint
from tests.train.fixtures import (
    DUBAI_PALETTE,
    make_change,
    make_coco_crops,
    make_dubai_pairs,
    make_geo_trees,
    make_imagefolder,
)

pytestmark = [pytest.mark.slow, pytest.mark.data]


def overfit(tmp_path: Path, task: str, data: Path, *, steps: int, lr: float, batch_size: int, tile: int,
            **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = TrainConfig(task=task, data=str(data), model="tiny", out=str(tmp_path / "run"), tile_size=tile,
                      steps=steps, batch_size=batch_size, lr=lr, warmup_steps=2, freeze_stages=0,
                      augment=AugmentConfig.none(), gumbel_schedule="off", log_every=1, device="cpu", **extra)
    summary = fit(cfg)
    scores = evaluate_checkpoint(str(tmp_path / "run"), str(data), task, palette=extra.get("palette"))
    first = sum(r for r in _losses(tmp_path)[:3]) / 3
    last = sum(r for r in _losses(tmp_path)[-3:]) / 3
    summary["first3"], summary["last3"] = first, last
    return summary, scores


def _losses(tmp_path: Path) -> list[float]:
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_classify_fits_six_dubai_chips(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", ("water", "vegetation", "building"), per_class=2)
    summary, scores = overfit(tmp_path, "classify", data, steps=20, lr=2e-3, batch_size=6, tile=64)
    assert summary["last3"] < summary["first3"] / 5, summary
    assert scores["accuracy"] == 1.0, scores


def test_segment_fits_four_dubai_chips(tmp_path: Path) -> None:
    data = make_dubai_pairs(tmp_path / "data", n=4)
    summary, scores = overfit(tmp_path, "segment", data, steps=60, lr=3e-3, batch_size=4, tile=64,
                              palette=DUBAI_PALETTE)
    assert summary["last3"] < summary["first3"] / 2.5, summary
    assert scores["accuracy"] > 0.8 and scores["miou"] > 0.5, scores


def test_change_fits_four_levir_pairs(tmp_path: Path) -> None:
    data = make_change(tmp_path / "data")
    summary, scores = overfit(tmp_path, "change", data, steps=25, lr=3e-3, batch_size=4, tile=64)
    assert summary["last3"] < summary["first3"] / 4, summary
    assert scores["f1"] > 0.85 and scores["accuracy"] > 0.95, scores


def test_detect_fits_three_nwpu_crops(tmp_path: Path) -> None:
    data = make_coco_crops(tmp_path / "data", n=3, size=64)
    summary, scores = overfit(tmp_path, "detect", data, steps=25, lr=3e-3, batch_size=3, tile=64)
    assert summary["last3"] < summary["first3"] / 2, summary
    assert scores["map50"] > 0.9 and scores["recall50"] == 1.0, scores


def test_instance_fits_three_nwpu_crops(tmp_path: Path) -> None:
    data = make_coco_crops(tmp_path / "data", n=3, size=64)
    summary, scores = overfit(tmp_path, "instance", data, steps=40, lr=3e-3, batch_size=3, tile=64)
    assert summary["last3"] < summary["first3"] / 3, summary
    # every object found with its box, masks that cover it; a stray detection may remain
    assert scores["recall50"] == 1.0 and scores["map50"] >= 0.75 and scores["mask_iou"] > 0.6, scores


def test_georeferenced_segment_fits_neon_tree_chips(tmp_path: Path) -> None:
    """A GeoTIFF + a GeoPackage of tree polygons (class column), cut into 128 px chips."""
    data = make_geo_trees(tmp_path / "data", chip=128)
    summary, scores = overfit(tmp_path, "segment", data, steps=60, lr=3e-3, batch_size=4, tile=128)
    assert summary["classes"] == ["background", "tree"] and summary["format"] == "geo"
    assert summary["last3"] < summary["first3"] / 2, summary
    assert scores["accuracy"] > 0.8 and scores["per_class_iou"]["tree"] > 0.65, scores


def test_region_classification_fits_nwpu_boxes(tmp_path: Path) -> None:
    """Given boxes of NWPU VHR-10 crops (several classes), classified from all FPN levels."""
    import json

    data = make_coco_crops(tmp_path / "data", n=4, size=96, distinct=True)
    coco = json.loads(data.read_text())
    assert len({a["category_id"] for a in coco["annotations"]}) >= 2, "want boxes of several classes"
    summary, scores = overfit(tmp_path, "region", data, steps=30, lr=3e-3, batch_size=4, tile=96)
    assert summary["last3"] < summary["first3"] / 4, summary
    assert scores["accuracy"] == 1.0, scores
