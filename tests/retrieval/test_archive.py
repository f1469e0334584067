"""Archives on disk: build, reopen, append with stable ids, verify, a killed append, bad input.

Every archive here is real (FAISS index files and GeoParquet sidecars written and read back);
chips come from ../shared/data and are embedded by the tiny model with random weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from shapely import wkb

from dynamicvis_cli.errors import ArchiveError, InputNotFoundError, OutputExistsError
from dynamicvis_cli.retrieval import archive as arc
from dynamicvis_cli.retrieval import faiss_index as fi
from dynamicvis_cli.retrieval import ingest
from dynamicvis_cli.retrieval.check import info, verify
from dynamicvis_cli.retrieval.codes import code_spec
from tests.retrieval.conftest import snapshot


def test_build_writes_a_consistent_archive_with_footprints(built_archive: Path, rgb_byte_tif: Path) -> None:
    archive = arc.Archive.open(built_archive)
    names = sorted(p.name for p in built_archive.iterdir())
    assert names == ["manifest.json", "v000001.index", "v000001.parquet"]
    assert archive.count == len(archive.table) == archive.index.ntotal > 10
    assert archive.table["id"].tolist() == list(range(archive.count))
    assert archive.code_spec.bits == 64 and archive.manifest["model"]["random_weights"] is True
    sidecar = gpd.read_parquet(built_archive / "v000001.parquet")  # a plain GeoParquet
    assert sidecar.crs.to_epsg() == 4326
    with rasterio.open(rgb_byte_tif) as ds:
        for _, row in sidecar.iterrows():
            window = Window(row.col_off, row.row_off, row.width, row.height)
            assert row.col_off % 128 == 0 or row.col_off == 791 - 128
            assert row.source == str(rgb_byte_tif.resolve()) and row.crs == "EPSG:32618"
            expected = window_bounds(window, ds.transform)
            assert wkb.loads(row.footprint_native).bounds == pytest.approx(expected)
            assert row.valid_fraction >= 0.5
    report = verify(built_archive)
    assert report["ok"], report["problems"]
    summary = info(built_archive)
    assert summary["crs"] == ["EPSG:32618"] and summary["count"] == archive.count
    assert -80 < summary["bbox_wgs84"][0] < summary["bbox_wgs84"][2] < -76


def test_append_keeps_ids_and_reopens(archive_copy: Path, embedder: Any, dubai_chips: Path) -> None:
    before = arc.Archive.open(archive_copy)
    result = ingest.append(archive_copy, [str(dubai_chips)], embedder, label_from_folder=True)
    after = arc.Archive.open(archive_copy)
    assert result["added"] == 16 and after.count == before.count + 16 and result["version"] == 2
    assert after.table["id"].tolist() == list(range(after.count))
    old = after.table.iloc[: before.count]
    assert (old["source"].tolist(), old["code"].tolist()) == (before.table["source"].tolist(),
                                                               before.table["code"].tolist())
    new = after.table.iloc[before.count:]
    assert new["geometry"].isna().all() and new["crs"].isna().all()  # PNG chips have no CRS
    assert set(new["labels"]) <= {"building", "land", "road", "vegetation", "water", "unlabeled"}
    assert (new["width"] == 64).all()
    # the previous version is kept for readers that opened it a moment ago
    versions = {f"v00000{v}.{e}" for v in (1, 2) for e in ("index", "parquet")}
    assert {p.name for p in archive_copy.glob("v*")} == versions
    again = ingest.append(archive_copy, [str(dubai_chips)], embedder)
    assert again["added"] == 0 and len(again["skipped_sources"]) == 16
    assert verify(archive_copy)["ok"]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_build_append_and_find_themselves(tmp_path: Path, kind: str, embedder: Any,
                                                           rgb_byte_tif: Path, dubai_chips: Path) -> None:
    path = tmp_path / f"{kind}.dvx"
    ingest.build(path, [str(rgb_byte_tif)], embedder, code=code_spec("sign", embedder.dim),
              params=fi.IndexParams(kind), settings=arc.ChipSettings(chip_size=128, min_valid=0.9))
    ingest.append(path, [str(dubai_chips)], embedder)
    archive = arc.Archive.open(path)
    assert fi.kind_of(archive.index) == kind == archive.manifest["index"]["kind"]
    report = verify(path)
    assert report["ok"], report["problems"]
    ids, codes = fi.codes_of(archive.index)
    assert np.array_equal(codes[np.argsort(ids)], archive.codes())


CRASH = textwrap.dedent("""
    import sys
    from dynamicvis_cli.retrieval import ingest
    from dynamicvis_cli.retrieval.embed import load_embedder
    e = load_embedder("tiny", device="cpu", random_weights=True, seed=0)
    ingest.append(sys.argv[1], [sys.argv[2]], e)
""")


def test_a_killed_append_leaves_the_previous_version(archive_copy: Path, embedder: Any,
                                                     dubai_chips: Path) -> None:
    before = arc.Archive.open(archive_copy)
    manifest = (archive_copy / "manifest.json").read_bytes()
    env = {**os.environ, arc.CRASH_ENV: "before-swap"}  # killed after writing v2, before the swap
    run = subprocess.run([sys.executable, "-c", CRASH, str(archive_copy), str(dubai_chips)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr
    assert (archive_copy / "v000002.index").exists() and (archive_copy / "v000002.parquet").exists()
    assert (archive_copy / "manifest.json").read_bytes() == manifest
    reopened = arc.Archive.open(archive_copy)
    assert reopened.count == before.count and reopened.manifest["version"] == 1
    report = verify(archive_copy)
    assert report["ok"] and any("v000002" in w for w in report["warnings"])
    # the next append removes the leftovers and continues the ids
    result = ingest.append(archive_copy, [str(dubai_chips)], embedder)
    after = arc.Archive.open(archive_copy)
    assert result["version"] == 2 and after.table["id"].tolist() == list(range(before.count + 16))
    assert not verify(archive_copy)["warnings"]


def test_bad_archives_are_refused_and_left_alone(archive_copy: Path, tmp_path: Path, embedder: Any,
                                                 dubai_chips: Path) -> None:
    with pytest.raises(InputNotFoundError):
        arc.Archive.open(tmp_path / "nothing.dvx")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArchiveError, match="not a dvis archive"):
        arc.Archive.open(tmp_path / "plain")
    with pytest.raises(ArchiveError, match="a file"):
        arc.Archive.open(archive_copy / "v000001.index")
    with pytest.raises(OutputExistsError):
        ingest.build(archive_copy, [str(dubai_chips)], embedder, code=code_spec("sign", 64),
                  params=fi.IndexParams(), settings=arc.ChipSettings())
    with pytest.raises(ArchiveError, match="not a dvis archive"):
        ingest.build(tmp_path / "plain", [str(dubai_chips)], embedder, code=code_spec("sign", 64),
                  params=fi.IndexParams(), settings=arc.ChipSettings(), overwrite=True)

    index = archive_copy / "v000001.index"
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2])  # truncated
    files = snapshot(archive_copy)
    with pytest.raises(ArchiveError, match="v000001.index: truncated"):
        arc.Archive.open(archive_copy)
    with pytest.raises(ArchiveError, match="truncated"):
        ingest.append(archive_copy, [str(dubai_chips)], embedder)
    assert snapshot(archive_copy) == files  # nothing written, not even a lock file
    assert not verify(archive_copy)["ok"]

    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # same size, different bytes
    index.write_bytes(bytes(flipped))
    with pytest.raises(ArchiveError, match="SHA-256"):
        arc.Archive.open(archive_copy)


def test_a_sidecar_that_disagrees_with_the_index_is_refused(archive_copy: Path) -> None:
    sidecar = archive_copy / "v000001.parquet"
    table = gpd.read_parquet(sidecar)
    table.iloc[:-1].to_parquet(sidecar, index=False)  # one row lost, manifest then "fixed up"
    manifest = json.loads((archive_copy / "manifest.json").read_text())
    manifest["sidecar_bytes"] = sidecar.stat().st_size
    manifest["sidecar_sha256"] = arc.sha256(sidecar)
    (archive_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match="disagree"):
        arc.Archive.open(archive_copy)
    report = verify(archive_copy)
    assert not report["ok"] and "rows in the sidecar" in " ".join(report["problems"])
