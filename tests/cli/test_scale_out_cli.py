"""Scale-out as users run it: several processes (gloo), run manifests with --resume, TTA.

Real data from ../shared/data, real subprocesses. The models are the tiny architecture, saved
once per module as checkpoints so that every process (and every run) builds the same weights:
a detector with random weights, and a segmenter whose random backbone carries a linear "water"
head fitted (least squares, D4-augmented) to real Dubai masks — meaningless as a product, but
its map follows real structure, which the TTA sanity bound needs (a random head's map is
orientation noise that no averaging can keep within IoU 0.9 of a single pass).

Thread counts are pinned (``OMP_NUM_THREADS=1``) so that one- and two-process runs compute every
tile with the same kernels; the engine's split is then exact, which is what is checked.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from dynamicvis_cli.infer.distributed import free_port
from tests.conftest import SHARED

pytestmark = [pytest.mark.slow, pytest.mark.data]

DATA = SHARED / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def data_file(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (needs ../shared/data)")
    return path


def dvis(*args: object, env: dict[str, str] | None = None, launcher: list[str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *(launcher or []), "-m", "dynamicvis_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env or ENV)


def torchrun(nproc: int) -> list[str]:
    return ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port())]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hidden(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def fit_water_head(loaded: object, folder: Path) -> None:
    """Fit the segment head's last 1x1 conv to Dubai water masks (train tiles), D4-augmented."""
    from PIL import Image

    from dynamicvis_cli.infer.tta import transforms

    module = loaded.module  # type: ignore[attr-defined]
    mean = torch.tensor(loaded.config.mean)[:, None, None]  # type: ignore[attr-defined]
    std = torch.tensor(loaded.config.std)[:, None, None]  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    crops, labels = [], []
    for image in sorted(glob.glob(str(folder / "Tile [1234]" / "images" / "*.jpg")))[::3]:
        rgb = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255
        mask = np.asarray(Image.open(image.replace("images", "masks").replace(".jpg", ".png")).convert("RGB"))
        water = (mask == [226, 169, 41]).all(-1)  # #E2A929, see dubai/README.md
        for _ in range(2):
            r, c = (int(rng.integers(0, n - 128)) for n in water.shape)
            crops.append((torch.from_numpy(rgb[r : r + 128, c : c + 128]).permute(2, 0, 1) - mean) / std)
            labels.append(water[r : r + 128, c : c + 128])
    features = []
    hook = module.head.conv_seg.register_forward_hook(lambda m, i, o: features.append(i[0]))
    batch, rows, targets = torch.stack(crops), [], []
    for t in transforms("d4"):
        features.clear()
        with torch.inference_mode():
            module.predict(t.apply(batch))
        f = t.invert(features[0])  # (N, C, 32, 32), back in the crops' orientation
        n, ch, h, w = f.shape
        rows.append(f.permute(0, 2, 3, 1).reshape(-1, ch).numpy())
        lab = np.stack(labels).reshape(n, h, 128 // h, w, 128 // w).mean((2, 4))
        targets.append(lab.reshape(-1))
    hook.remove()
    x = np.hstack([np.concatenate(rows), np.ones((sum(len(r) for r in rows), 1))])
    y = np.where(np.concatenate(targets) > 0.5, 1.0, -1.0)
    coef = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y)
    with torch.no_grad():
        conv = module.head.conv_seg
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, :, 0, 0] = torch.from_numpy(coef[:-1] * 4).float()
        conv.bias[1] = float(coef[-1] * 4)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynamicvis_cli.checkpoints.store import save_checkpoint
    from dynamicvis_cli.checkpoints.task import load_task_model

    dubai = data_file("dubai")
    torch.manual_seed(0)
    loaded = load_task_model("tiny", "segment", classes=["other", "water"], random_weights=True)
    fit_water_head(loaded, dubai)
    return save_checkpoint(loaded.module.state_dict(), loaded.config,
                           tmp_path_factory.mktemp("models") / "water")


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynamicvis_cli.checkpoints.store import save_checkpoint
    from dynamicvis_cli.checkpoints.task import load_task_model

    torch.manual_seed(0)
    loaded = load_task_model("tiny", "detect", classes=["ship"], random_weights=True)
    return save_checkpoint(loaded.module.state_dict(), loaded.config,
                           tmp_path_factory.mktemp("models") / "ships")


def test_two_processes_write_the_one_process_raster(tmp_path: Path, segmenter: Path) -> None:
    scene = data_file("geotiff", "world.rgb.tif")  # 512x256: 3 tile rows, cut between 2 ranks
    args = ["-m", segmenter, "-q", "--tile-size", "128", "--blend", "linear"]
    one = dvis("segment", scene, "-o", tmp_path / "one.tif", *args)
    assert one.returncode == 0, one.stderr
    two = dvis("segment", scene, "-o", tmp_path / "two.tif", *args, "--devices", "cpu,cpu")
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)  # one summary, from rank 0
    run = summary["runs"][0]
    assert summary["ranks"] == {"count": 2, "split": "tiles"} and run["ranks"]["tiles_recomputed"] > 0
    assert run["tiles"] == json.loads(one.stdout)["runs"][0]["tiles"] and run["blend"] == "linear"
    assert sha(tmp_path / "one.tif") == sha(tmp_path / "two.tif")  # pixels, tags, layout
    assert not hidden(tmp_path)


def test_two_processes_find_the_one_process_boxes(tmp_path: Path, detector: Path) -> None:
    import geopandas as gpd

    scene = data_file("dota_harbour", "P1888.png")
    args = ["-m", detector, "-q", "--tile-size", "256", "--overlap", "32", "--threshold", "0.05",
            "--pixel-coords"]
    one = dvis("detect", scene, "-o", tmp_path / "one.gpkg", *args)
    assert one.returncode == 0, one.stderr
    two = dvis("detect", scene, "-o", tmp_path / "two.gpkg", *args, launcher=torchrun(2))
    assert two.returncode == 0, two.stderr
    assert len(two.stdout.strip().splitlines()) == 1  # rank 1 prints nothing
    a, b = gpd.read_file(tmp_path / "one.gpkg"), gpd.read_file(tmp_path / "two.gpkg")
    assert len(a) >= 3, "the check needs some boxes, and some of them on a seam between ranks"
    cols = ["x1", "y1", "x2", "y2", "score", "class_id"]
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())


def test_many_inputs_split_across_ranks_then_killed_and_resumed(tmp_path: Path, segmenter: Path) -> None:
    data_file("timeseries")
    pattern = str(DATA / "timeseries" / "landsat_pucallpa_*.tif")
    inputs = sorted(glob.glob(pattern))
    args = ["-m", segmenter, "-q", "--tile-size", "128"]
    # Uninterrupted, on two ranks: each writes its own outputs and manifest lines.
    full = dvis("segment", pattern, "--out-dir", tmp_path / "full", "--manifest", tmp_path / "full.jsonl",
                *args, launcher=torchrun(2))
    assert full.returncode == 0, full.stderr
    summary = json.loads(full.stdout)
    assert summary["ranks"] == {"count": 2, "split": "inputs"} and len(summary["runs"]) == 3
    lines = [json.loads(x) for x in (tmp_path / "full.jsonl").read_text().splitlines()]
    assert sorted(x["rank"] for x in lines) == [0, 0, 1]
    # the manifest records resolved paths (../shared may be a link)
    assert sorted(x["input"] for x in lines) == sorted(str(Path(i).resolve()) for i in inputs)

    # Killed once the first input is recorded, then resumed.
    out, book = tmp_path / "part", tmp_path / "part.jsonl"
    cmd = [sys.executable, "-m", "dynamicvis_cli", "segment", pattern, "--out-dir", str(out),
           "--manifest", str(book), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    while not (book.exists() and book.read_text().count("\n") >= 1) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = book.read_text().count("\n")
    assert 1 <= recorded
    resumed = dvis("segment", pattern, "--out-dir", out, "--manifest", book, "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert len(summary["manifest"]["skipped_done"]) == recorded
    assert len(summary["runs"]) == 3 - recorded
    for src in inputs:
        name = Path(src).stem + ".seg.tif"
        assert sha(out / name) == sha(tmp_path / "full" / name), name
    assert not hidden(out)  # what the killed run left is gone

    # An output that no longer exists is redone; the others are skipped.
    (out / (Path(inputs[0]).stem + ".seg.tif")).unlink()
    again = dvis("segment", pattern, "--out-dir", out, "--manifest", book, "--resume", *args)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert [r["input"] for r in summary["runs"]] == [inputs[0]]
    assert summary["manifest"]["redone"][0]["reason"].endswith("no longer exists")
    name = Path(inputs[0]).stem + ".seg.tif"
    assert sha(out / name) == sha(tmp_path / "full" / name)

    # Other flags are refused, naming the difference.
    other = dvis("segment", pattern, "--out-dir", out, "--manifest", book, "--resume", *args[:-1], "64")
    assert other.returncode == 2
    assert "written by a different run (tile_size: 128 → 64)" in other.stderr and "--force" in other.stderr


def test_a_rank_that_never_joins_is_a_clear_error_and_writes_nothing(tmp_path: Path, segmenter: Path) -> None:
    scene = data_file("geotiff", "RGB.byte.tif")
    env = {**ENV, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DVIS_DIST_CONNECT_TIMEOUT": "3"}
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    run = dvis("segment", scene, "-o", tmp_path / "out.tif", "-m", segmenter, "-q", env=env)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "rank 0 of 2: could not reach the other ranks" in lines[0], run.stderr
    assert list(tmp_path.iterdir()) == []


def test_tta_changes_the_map_but_stays_close_to_one_pass(tmp_path: Path, segmenter: Path) -> None:
    from dynamicvis_cli.checkpoints.task import load_task_model
    from dynamicvis_cli.infer.context import RunOptions
    from dynamicvis_cli.infer.dense import segment_scene

    scene = data_file("dubai", "Tile 6", "images", "image_part_001.jpg")  # a val tile, never fitted on
    run = dvis("segment", scene, "-o", tmp_path / "flips.tif", "-m", segmenter, "-q", "--tile-size", "128",
               "--tta", "flips")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["runs"][0]["tta"] == "flips"
    # The one-pass map in this process (saves starting one more).
    segment_scene(load_task_model(segmenter, "segment"), scene, tmp_path / "one.tif", bands=[1, 2, 3],
                  opts=RunOptions(device="cpu", tile_size=128))
    with rasterio.open(tmp_path / "flips.tif") as a, rasterio.open(tmp_path / "one.tif") as b:
        tta, one = a.read(1), b.read(1)
        assert a.tags()["tta"] == "flips" and "tta" not in b.tags()
    assert (one != tta).sum() > 100  # it does something
    for cls in (0, 1):  # other, water
        iou = ((one == cls) & (tta == cls)).sum() / ((one == cls) | (tta == cls)).sum()
        assert iou >= 0.9, (cls, iou)


def test_contradicting_or_incomplete_flags_are_usage_errors(tmp_path: Path) -> None:
    scene = data_file("geotiff", "RGB.byte.tif")
    run = dvis("segment", scene, "-o", tmp_path / "x.tif", "--blend", "centre", "--stitch", "blend",
               "--resume", "-m", "tiny", "--random-weights", "--classes", "a,b", "-q")
    assert run.returncode == 2 and "--stitch blend contradicts --blend centre" in run.stderr
    run = dvis("detect", scene, "-o", tmp_path / "x.gpkg", "--resume", "-m", "tiny", "--random-weights",
               "--classes", "a,b", "-q")
    assert run.returncode == 2 and "--resume needs --manifest" in run.stderr
    assert list(tmp_path.iterdir()) == []
