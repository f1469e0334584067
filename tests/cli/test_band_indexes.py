"""The 1-based bands a model was fine-tuned on travel with its checkpoint (``band_indexes`` in
config.json) and are what every command reads when it is given no ``--bands``.

Checkpoints come from real short ``dvis finetune`` runs (``tiny``, 2 steps) on real chips from
../shared/data: Dubai RGB chips read as ``--bands 3,2,1`` (segment) and 4-band NAIP chips (red,
green, blue, near-infrared) read as ``--bands 4,3,2`` (classify). Inference, evaluation and
indexing then run as real subprocesses, as in tests/cli/test_finetune_cli.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from dynamicvis_cli.checkpoints.config import ModelConfig
from dynamicvis_cli.checkpoints.registry import arch_config
from dynamicvis_cli.errors import CheckpointError, DvisUsageError
from dynamicvis_cli.geo.read import resolve_bands
from dynamicvis_cli.train.config import TrainConfig, resolve
from dynamicvis_cli.train.model import band_names, export_config
from tests.cli.test_finetune_cli import _one_thread, cli, dvis, finetune  # noqa: F401 (fixture)
from tests.train.fixtures import DUBAI_PALETTE, make_dubai_pairs, make_imagefolder, shared

# -- the config field and the band resolution (no data, no subprocess) --------------------------


def test_config_records_band_indexes_and_reads_old_configs() -> None:
    cfg = arch_config("tiny")
    assert cfg.band_indexes is None and cfg.default_bands() == [1, 2, 3]
    assert "band_indexes" not in cfg.to_dict()  # configs without them are written as before
    old = cfg.to_dict()
    assert ModelConfig.from_dict(old).band_indexes is None  # a config.json from before the field
    trained = export_config(cfg, classes=["a", "b"], bands=[3, 2, 1], mean=[0.5] * 3, std=[0.2] * 3,
                            tile_size=64, gumbel_schedule="decay", provenance={})
    assert trained.band_indexes == [3, 2, 1] and trained.bands == ["band3", "band2", "band1"]
    back = ModelConfig.from_json(trained.to_json())
    assert back.band_indexes == [3, 2, 1] and back.default_bands() == [3, 2, 1]
    # the model's own names are kept for the bands it reads by default, and only for those
    assert band_names(back, [3, 2, 1]) == ["band3", "band2", "band1"]
    assert band_names(back, [1, 2, 3]) == ["band1", "band2", "band3"]
    assert band_names(cfg, [1, 2, 3]) == ["red", "green", "blue"]
    # another band count: the recorded indexes no longer apply
    assert back.with_bands(3).band_indexes == [3, 2, 1]
    assert back.with_bands(4).band_indexes is None and back.with_bands(4).default_bands() == [1, 2, 3, 4]


@pytest.mark.parametrize("bad", [[0, 1, 2], [1, 2], "3,2,1", [1.5, 2, 3], [True, 2, 3]])
def test_invalid_band_indexes_are_a_checkpoint_error(bad: Any) -> None:
    d = {**arch_config("tiny").to_dict(), "band_indexes": bad}
    with pytest.raises(CheckpointError, match="band_indexes"):
        ModelConfig.from_dict(d, source="run/config.json")


def test_resolve_bands_default() -> None:
    assert resolve_bands(4, None, 3, default=[4, 3, 2]) == [4, 3, 2]
    assert resolve_bands(4, [1, 2, 3], 3, default=[4, 3, 2]) == [1, 2, 3]  # --bands wins
    assert resolve_bands(4, None, 3) == [1, 2, 3]
    with pytest.raises(DvisUsageError, match=r"scene.tif: the raster has 3 band\(s\) but the model was "
                                             r"trained on bands 4,3,2.*--bands"):
        resolve_bands(3, None, 3, default=[4, 3, 2], path="scene.tif")


def test_finetune_config_defaults_to_the_model_bands() -> None:
    kw: dict[str, Any] = {"model_tile": 64, "model_mean": [0.5] * 3, "model_std": [0.2] * 3, "in_chans": 3,
                          "require_io": False}
    assert resolve(TrainConfig(), **kw, model_bands=[3, 2, 1]).bands == [3, 2, 1]
    assert resolve(TrainConfig(bands=[1, 2, 3]), **kw, model_bands=[3, 2, 1]).bands == [1, 2, 3]
    assert resolve(TrainConfig(), **kw).bands == [1, 2, 3]


# -- real runs ----------------------------------------------------------------------------------

NAIP = ("naip_2009", "naip_2020")


def make_naip_folder(dest: Path, per_class: int = 2, size: int = 64) -> Path:
    """ROOT/<year>/<n>.tif: 4-band GeoTIFF chips (red, green, blue, NIR) of the real NAIP tile,
    labelled by acquisition year."""
    for name in NAIP:
        src_path = shared("timeseries", f"{name}.tif")
        (dest / name).mkdir(parents=True, exist_ok=True)
        with rasterio.open(src_path) as src:
            assert src.count == 4
            for i in range(per_class):
                window = Window(150 + 200 * i, 120 + 150 * i, size, size)
                profile = {**src.profile, "width": size, "height": size,
                           "transform": src.window_transform(window)}
                profile.pop("blockxsize", None)
                profile.pop("blockysize", None)
                # as the source: four plain bands (GDAL would make a 4th byte band alpha)
                profile.update(tiled=False, photometric="MINISBLACK")
                with rasterio.open(dest / name / f"{i}.tif", "w", **profile) as out:
                    out.write(src.read(window=window))
                    out.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                                       ColorInterp.undefined]
    return dest


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(data, run folder) of a segmentation model fine-tuned on Dubai chips read as 3,2,1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("seg")
    data = make_dubai_pairs(root / "data", n=2)
    palette = root / "palette.json"
    palette.write_text(json.dumps(DUBAI_PALETTE))
    finetune("--task", "segment", "--data", data, "--palette", palette, "--bands", "3,2,1", "-o", root / "run")
    torch.set_num_threads(before)
    yield data, root / "run"


@pytest.fixture(scope="module")
def naip_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(data, run folder) of a classifier fine-tuned on 4-band NAIP chips read as 4,3,2."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("naip")
    data = make_naip_folder(root / "data")
    finetune("--task", "classify", "--data", data, "--bands", "4,3,2", "-o", root / "run")
    torch.set_num_threads(before)
    yield data, root / "run"


def _run_json(*args: object) -> dict[str, Any]:
    run = dvis(*args)
    assert run.returncode == 0, run.stderr
    out: dict[str, Any] = json.loads(run.stdout)
    return out


@pytest.mark.data
def test_segment_reads_the_bands_the_checkpoint_was_trained_on(seg_run: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    data, run_dir = seg_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["band_indexes"] == [3, 2, 1] and config["bands"] == ["band3", "band2", "band1"]
    chip = data / "images" / "chip0.png"
    maps = {}
    for name, extra in (("default", []), ("321", ["--bands", "3,2,1"]), ("123", ["--bands", "1,2,3"])):
        out = tmp_path / f"{name}.tif"
        summary = _run_json("segment", chip, "-o", out, "-m", run_dir, "-q", *extra)
        maps[name] = (summary["runs"][0]["bands"], rasterio.open(out).read())
    assert maps["default"][0] == [3, 2, 1] and maps["123"][0] == [1, 2, 3]
    assert np.array_equal(maps["default"][1], maps["321"][1])
    assert not np.array_equal(maps["default"][1], maps["123"][1])


@pytest.mark.data
def test_classify_reads_the_bands_the_checkpoint_was_trained_on(naip_run: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    data, run_dir = naip_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["band_indexes"] == [4, 3, 2] and config["bands"] == ["band4", "band3", "band2"]
    chips = sorted(data.glob("*/*.tif"))
    records = {}
    for name, extra in (("default", []), ("432", ["--bands", "4,3,2"]), ("123", ["--bands", "1,2,3"])):
        out = tmp_path / f"{name}.json"
        _run_json("classify", *chips, "-o", out, "-m", run_dir, "-q", *extra)
        records[name] = [(r["class"], r["score"]) for r in json.loads(out.read_text())]
    assert records["default"] == records["432"]
    assert records["default"] != records["123"]
    # an RGB image lacks the recorded band 4: the usual one-line usage error
    rgb = make_imagefolder(tmp_path / "rgb", ("water",), per_class=1)
    run = dvis("classify", rgb / "water" / "0.png", "-o", tmp_path / "rgb.json", "-m", run_dir, "-q")
    assert run.returncode == 2
    assert "trained on bands 4,3,2" in run.stderr and "--bands" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.data
def test_finetune_from_the_checkpoint_keeps_its_bands(naip_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run_dir = naip_run
    code, out, err = cli("finetune", "--task", "classify", "--data", data, "-m", run_dir, "--print-config")
    assert code == 0, err
    import yaml

    assert yaml.safe_load(out)["bands"] == [4, 3, 2]
    code, out, err = cli("finetune", "--task", "classify", "--data", data, "-m", run_dir, "-o", tmp_path / "again",
                         "--steps", 2, "--batch-size", 2, "--tile-size", 64, "--device", "cpu", "-q")
    assert code == 0, err
    assert json.loads(out)["weights_from"] == {"trunk": "checkpoint", "head": "checkpoint"}
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["band_indexes"] == [4, 3, 2] and config["bands"] == ["band4", "band3", "band2"]


@pytest.mark.data
def test_index_build_reads_and_records_the_trained_bands(naip_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run_dir = naip_run
    archive = tmp_path / "chips.dvx"
    _run_json("index", "build", data, "-o", archive, "-m", run_dir, "--chip-size", 64, "--device", "cpu", "-q")
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["chips"]["bands"] == [4, 3, 2]  # appends and queries read them too
    rgb = make_imagefolder(tmp_path / "rgb", ("water",), per_class=1)
    run = dvis("index", "build", rgb, "-o", tmp_path / "rgb.dvx", "-m", run_dir, "--device", "cpu", "-q")
    assert run.returncode == 2 and "trained on bands 4,3,2" in run.stderr, run.stderr


@pytest.mark.data
def test_evaluate_reads_the_trained_bands(naip_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, run_dir = naip_run
    report = _run_json("evaluate", "--task", "classify", "-m", run_dir, "--data", data, "--device", "cpu", "-q")
    assert report["items"] == 4
    # the same class folders of RGB images: band 4 is missing, and evaluate says so
    rgb = tmp_path / "rgb"
    for name in NAIP:
        make_imagefolder(tmp_path / "chips" / name, ("water",), per_class=1)
        (rgb / name).mkdir(parents=True)
        (tmp_path / "chips" / name / "water" / "0.png").rename(rgb / name / "0.png")
    run = dvis("evaluate", "--task", "classify", "-m", run_dir, "--data", rgb, "--device", "cpu", "-q")
    assert run.returncode == 2 and "band 4 is needed" in run.stderr, run.stderr
