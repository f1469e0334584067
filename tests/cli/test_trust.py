"""The scripting contract at scale: exit codes, stdout pipes, RFC 7946, provenance, memory budgets.

Real subprocesses on real scenes from ../shared/data with the tiny architecture and random
weights (``--threshold 0`` so that random weights still give boxes to check coordinates with).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from shapely.geometry import shape

from tests.cli.test_scene_commands import TINY, data_file, dvis, leftovers

DETECT = ["--classes", "tree", "--threshold", "0", "--max-detections", "25"]


def rfc7946_problems(doc: dict[str, Any]) -> list[str]:
    """What keeps a GeoJSON document from RFC 7946 (the parts a writer can get wrong)."""
    problems = []
    if doc.get("type") != "FeatureCollection":
        problems.append("not a FeatureCollection")
    if "crs" in doc:
        problems.append("has a 'crs' member (removed by RFC 7946 section 4)")
    for i, feature in enumerate(doc.get("features", [])):
        geom = feature["geometry"]
        polygons = {"Polygon": [geom["coordinates"]], "MultiPolygon": geom["coordinates"]}.get(geom["type"], [])
        for rings in polygons:
            for k, ring in enumerate(rings):
                lon, lat = np.asarray(ring).T
                if not ((-180 <= lon) & (lon <= 180) & (-90 <= lat) & (lat <= 90)).all():
                    problems.append(f"feature {i}: coordinates are not lon/lat")
                if ring[0] != ring[-1]:
                    problems.append(f"feature {i}: ring {k} is not closed")
                x, y = lon - lon[0], lat - lat[0]  # relative: no cancellation in the products
                area2 = np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])  # > 0: counter-clockwise
                if (k == 0 and area2 < 0) or (k > 0 and area2 > 0):
                    problems.append(f"feature {i}: ring {k} breaks the right-hand rule (section 3.1.6)")
                for value in np.ravel(ring):
                    if -Decimal(repr(float(value))).as_tuple().exponent > 7:
                        problems.append(f"feature {i}: more than 7 decimals ({value})")
                        break
    return problems


def summary_of(run: subprocess.CompletedProcess[str], *, stderr: bool = False) -> dict[str, Any]:
    text = run.stderr if stderr else run.stdout
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("scene", [("geotiff", "RGB.byte.tif"), ("neon_trees", "OSBS_029.tif")])
def test_geojson_is_rfc7946_and_round_trips_to_pixels(scene: tuple[str, str], tmp_path: Path) -> None:
    src = data_file(*scene)
    out = tmp_path / "boxes.geojson"
    run = dvis("detect", src, "-o", out, *DETECT, *TINY)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    assert len(doc["features"]) > 0 and rfc7946_problems(doc) == []
    with rasterio.open(src) as ds:
        to_native = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True)
        inverse = ~ds.transform
    for feature in doc["features"]:
        p = feature["properties"]
        lon, lat = np.asarray(shape(feature["geometry"]).exterior.coords).T
        x, y = to_native.transform(lon, lat)
        cols, rows = inverse @ (np.asarray(x), np.asarray(y))
        # pixel → map → lon/lat (7 decimals) → map → pixel: within half a pixel of the box
        assert np.allclose([rows.min(), rows.max()], [p["y1"], p["y2"]], atol=0.5)
        assert np.allclose([cols.min(), cols.max()], [p["x1"], p["x2"]], atol=0.5)
    # provenance: in the file (a foreign member) and shown by dvis info
    info = dvis("info", out, "--json")
    assert info.returncode == 0, info.stderr
    tags = json.loads(info.stdout)["provenance"]
    assert tags["model"] == "tiny" and tags["weights_sha256"] == "random"
    assert tags["inputs"] == str(src.resolve()) and tags["inputs_sha256"].startswith("sha256:")
    assert (tags["tile_size"], tags["threshold"], tags["bands"]) == ("128", "0.0", "1,2,3")


def test_stdout_streams_geojsonseq_into_a_pipe(tmp_path: Path) -> None:
    src = data_file("neon_trees", "OSBS_029.tif")
    producer = subprocess.Popen(
        [sys.executable, "-m", "dynamicvis_cli", "detect", src, "-o", "-", *DETECT, *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    reader = ("import geopandas, sys; g = geopandas.read_file('/vsistdin/'); "
              "print(len(g), g.crs.to_epsg(), round(g.total_bounds[0], 3))")
    consumer = subprocess.run([sys.executable, "-c", reader], stdin=producer.stdout,
                              capture_output=True, text=True, timeout=600)
    assert producer.stdout is not None
    producer.stdout.close()
    _, err = producer.communicate(timeout=600)
    assert producer.returncode == 0, err
    summary = json.loads(err.strip().splitlines()[-1])  # the summary goes to stderr
    count, epsg, west = consumer.stdout.split()
    assert consumer.returncode == 0, consumer.stderr
    assert int(count) == summary["runs"][0]["detections"] > 0 and epsg == "4326"
    assert -82.0 < float(west) < -81.9  # Florida, in longitude
    if shutil.which("ogr2ogr"):
        again = subprocess.run(f"{sys.executable} -m dynamicvis_cli detect {src} -o - "
                               f"{' '.join(DETECT + TINY)} 2>/dev/null | ogr2ogr -f GPKG "
                               f"{tmp_path / 'piped.gpkg'} /vsistdin/", shell=True)
        assert again.returncode == 0


def test_a_failing_input_in_a_batch_gives_exit_4_and_the_rest_is_written(tmp_path: Path) -> None:
    good = data_file("geotiff", "RGB.byte.tif")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(good, inputs / "a.tif")
    (inputs / "b.tif").write_bytes(good.read_bytes()[:40_000])  # truncated
    out = tmp_path / "out"
    run = dvis("segment", inputs / "*.tif", "--out-dir", out, "--classes", "x,y", *TINY)
    assert run.returncode == 4, run.stderr
    summary = summary_of(run)
    assert [Path(f["input"]).name for f in summary["failed"]] == ["b.tif"]
    assert "b.tif" in summary["failed"][0]["error"]
    assert [Path(r["output"]).name for r in summary["runs"]] == ["a.seg.tif"]
    assert sorted(p.name for p in out.iterdir()) == ["a.seg.tif"]  # nothing partial for b
    assert "1 of 2 inputs failed" in run.stderr.strip().splitlines()[-1]
    assert summary["peak_rss_mb"]["main"] > 100 and summary["wall_s"] > 0
    assert not leftovers(out)


def test_max_memory_fits_the_batch_or_refuses(tmp_path: Path) -> None:
    src = data_file("geotiff", "RGB.byte.tif")
    run = dvis("segment", src, "-o", tmp_path / "a.tif", "--classes", "x,y", "--max-memory", "3G",
               "--batch-size", "64", *TINY)
    assert run.returncode == 0, run.stderr
    result = summary_of(run)["runs"][0]
    plan = result["memory_plan"]
    assert plan["max_memory_mb"] == 3072 and plan["per_image_mb"] > 0
    assert 1 <= plan["batch_size"] == result["batch_size"] <= 64
    assert set(result["seconds"]) >= {"read", "model", "stitch", "write", "cog"}
    assert result["tiles_run"] + result["tiles_skipped_nodata"] == result["tiles"]
    small = dvis("segment", src, "-o", tmp_path / "b.tif", "--classes", "x,y", "--max-memory", "200M", *TINY)
    assert small.returncode == 2 and "--max-memory 200M is too small" in small.stderr
    assert not (tmp_path / "b.tif").exists() and not leftovers(tmp_path)
