"""`dvis index`, `dvis search` and `dvis evaluate` as users run them: real subprocesses on real data.

The tiny architecture with random weights keeps these fast; they check files, exit codes, the
JSON summaries, footprints in the output and that bad input leaves everything as it was.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED

DATA = SHARED / "data"
TINY = ["-m", "tiny", "--random-weights", "-q"]


def data_file(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (needs ../shared/data)")
    return path


def dvis(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamicvis_cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RGB.byte.tif in 128 px chips plus two real Dubai images as whole-image chips."""
    scene = data_file("geotiff", "RGB.byte.tif")
    tile = data_file("dubai", "Tile 2", "images")
    path = tmp_path_factory.mktemp("cli") / "a.dvx"
    run = dvis("index", "build", scene, str(tile / "image_part_00[12].jpg"), "-o", path,
               "--chip-size", 600, "--stride", 600, *TINY)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["random_weights"] is True and summary["codes"] == {"method": "sign", "bits": 64, "dim": 64}
    assert summary["sources"] == 3 and summary["count"] == summary["added"] > 2
    return path


def test_build_info_search_to_geojson_and_verify(archive: Path, tmp_path: Path) -> None:
    info = dvis("index", "info", archive)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["crs"] == ["EPSG:32618"] and described["without_crs"] == 2
    scene = data_file("geotiff", "RGB.byte.tif")
    hits = tmp_path / "hits.geojson"
    run = dvis("search", archive, f"{scene}@0,0,600,600", "id:1", "-k", 3, "-o", hits, "--device", "cpu",
               "-q")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["hits"] == 6 and summary["output"] == str(hits)
    collection = json.loads(hits.read_text())
    assert "crs" not in collection and len(collection["features"]) == 6
    first = collection["features"][0]["properties"]
    assert (first["rank"], first["distance"]) == (1, 0) and first["source"] == str(scene.resolve())
    assert (first["col_off"], first["row_off"], first["width"]) == (0, 0, 600)
    lon, lat = collection["features"][0]["geometry"]["coordinates"][0][0]
    assert -80 < lon < -76 and 23 < lat < 26
    table = dvis("search", archive, "id:0", "-k", 2, "--format", "table", "--bbox", "-80,20,-60,30")
    assert table.returncode == 0 and "rank" in table.stdout and "RGB.byte" in table.stdout
    verify = dvis("index", "verify", archive)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["ok"] is True


def test_a_killed_add_leaves_the_archive_usable(archive: Path, tmp_path: Path) -> None:
    import shutil

    work = tmp_path / "a.dvx"
    shutil.copytree(archive, work)
    before = json.loads((work / "manifest.json").read_text())["count"]
    folder = data_file("timeseries")  # six scenes: several seconds of embedding to interrupt
    proc = subprocess.Popen([sys.executable, "-m", "dynamicvis_cli", "index", "add", work, folder, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (work / ".lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # holding the lock: it is embedding the new chips
    assert proc.poll() is None, "the append finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    verify = dvis("index", "verify", work)
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] and report["count"] == before and report["version"] == 1


def test_bad_input_is_one_line_and_changes_nothing(archive: Path, tmp_path: Path) -> None:
    not_archive = tmp_path / "folder"
    not_archive.mkdir()
    run = dvis("search", not_archive, "id:0")
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0
    assert "not a dvis archive" in run.stderr and not any(not_archive.iterdir())
    too_many = dvis("search", archive, "id:0", "-k", 10_000)
    assert too_many.returncode == 2 and "holds only" in too_many.stderr
    one_band = data_file("geotiff", "shade.tif")
    bands = dvis("search", archive, f"{one_band}@0,0,64,64", "-k", 1)
    assert bands.returncode == 2 and "band" in bands.stderr

    import shutil

    broken = tmp_path / "broken.dvx"
    shutil.copytree(archive, broken)
    index = broken / "v000001.index"
    index.write_bytes(index.read_bytes()[:-7])
    state = files(broken)
    for args in (("index", "verify", broken), ("index", "add", broken, one_band, "-q")):
        run = dvis(*args)
        assert run.returncode == 1 and "v000001.index" in run.stderr and "truncated" in run.stderr, args
    assert files(broken) == state


def test_evaluate_retrieval_on_labelled_chips(tmp_path: Path) -> None:
    from PIL import Image

    image = data_file("dubai", "Tile 1", "images", "image_part_001.jpg")
    pixels = Image.open(image).convert("RGB")
    for i in range(8):  # two "classes" by position: left and right halves of a real image
        label = "left" if i < 4 else "right"
        x = (i % 4) * 64 + (0 if label == "left" else 400)
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        pixels.crop((x, 0, x + 64, 64)).save(tmp_path / "data" / label / f"{i}.png")
    report = tmp_path / "report.json"
    run = dvis("evaluate", "--task", "retrieval", "--data", tmp_path / "data", "-k", 3, "--bits", "32",
               "-o", report, "--device", "cpu", *TINY)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["random_weights"] is True
    assert json.loads(report.read_text())["results"] == summary["results"]
    assert [r["representation"] for r in summary["results"]] == ["float", "binary", "hash-32"]
    unknown = dvis("evaluate", "--task", "ranking", "--data", tmp_path / "data")
    assert unknown.returncode == 2 and "retrieval" in unknown.stderr
