"""``dvis pretrain`` end to end on real annotated images: NWPU VHR-10 crops and SSDD SAR ships are
packed into WebDataset shards (``dvis data shard``), streamed, the MIL-NCE + CE loss goes down,
checkpoints are written, a resumed run continues, and the result starts ``dvis finetune`` and
``dvis index build``; its region classifier runs through ``dvis evaluate --task region``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_finetune_cli import cli
from tests.train.fixtures import make_coco_crops, shared

pytestmark = [pytest.mark.slow, pytest.mark.data]


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    nwpu = make_coco_crops(root / "nwpu", n=5, size=128, distinct=True)
    ssdd = shared("ssdd", "train")
    for args in ([nwpu, "-o", root / "s-nwpu", "--samples-per-shard", 2],
                 [ssdd / "instances_train.json", "--image-root", ssdd / "JPEGImages", "-o", root / "s-ssdd"]):
        code, out, err = cli("data", "shard", *args, "-q")
        assert code == 0, err
    return root, nwpu, root / "s-nwpu"


def test_shards_stream_into_a_pretraining_run_that_learns_and_finetunes(
        shards: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, nwpu, _ = shards
    data = f"{root / 's-nwpu'}::{root / 's-ssdd'}"
    categories = json.loads((root / "s-nwpu" / "dataset.json").read_text())["classes"]
    assert "ship" in categories  # SSDD's one category joins NWPU's
    common = ["--data", data, "-m", "tiny", "--classes", ",".join(categories), "--tile-size", 128,
              "--batch-size", 4, "--lr", 2e-3, "--no-augment", "--gumbel-schedule", "off", "--log-every", 1,
              "--save-every", 6, "--device", "cpu", "--set", "shuffle=16", "--set", "warmup_steps=1", "-q"]
    code, out, err = cli("pretrain", *common, "--steps", 12, "-o", tmp_path / "run")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["format"] == "shards" and summary["samples"] == 5 + 2, summary
    losses = _losses(tmp_path / "run")
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.8, losses
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000006", "step-0000012"]
    assert (tmp_path / "run" / "meta_embeddings.safetensors").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "backbone" and config["fpn_channels"]

    # a longer run resumed from the 12-step one continues its step count and schedule
    code, out, err = cli("pretrain", *common, "--steps", 14, "-o", tmp_path / "run", "--resume")
    assert code == 0, err
    assert json.loads(out)["resumed_from_step"] == 12 and len(_losses(tmp_path / "run")) == 14

    # the pretrained backbone starts a detector; the region classifier is evaluated on the crops
    code, out, err = cli("finetune", "--task", "detect", "--data", nwpu, "-m", tmp_path / "run", "-o",
                         tmp_path / "det", "--steps", 1, "--batch-size", 2, "--tile-size", 128, "--device", "cpu",
                         "-q")
    assert code == 0, err
    assert json.loads(out)["weights_from"]["trunk"] == "checkpoint"
    code, out, err = cli("evaluate", "--task", "region", "-m", tmp_path / "run" / "region", "--data", nwpu,
                         "--device", "cpu", "-q")
    assert code == 0, err
    assert json.loads(out)["weights"] == {"trunk": "checkpoint", "head": "checkpoint"}


def test_pretrain_refuses_bad_inputs_before_training(shards: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, _, nwpu_shards = shards
    emb = tmp_path / "e.npy"
    import numpy as np

    np.save(emb, np.zeros((1, 8), dtype=np.float32))
    (tmp_path / "e.txt").write_text("airplane\n")
    cases = [
        (["--data", nwpu_shards, "--embeddings", emb], "no embedding for categor"),
        (["--data", tmp_path / "nothing"], "does not exist"),
        (["--data", nwpu_shards, "--embeddings", tmp_path / "missing.npy"], "embedding file does not exist"),
    ]
    for args, message in cases:
        code, _, err = cli("pretrain", *args, "-m", "tiny", "-o", tmp_path / "run", "--steps", 1, "--device", "cpu",
                           "-q")
        assert code == 2 and message in err, (args, err)
        assert not (tmp_path / "run").exists()
