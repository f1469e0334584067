"""Input expansion, output templates and sharding for many inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamicvis_cli.errors import DvisUsageError, InputNotFoundError
from dynamicvis_cli.infer.batch import expand_inputs, parse_shard, plan_jobs, shard


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / f"s{i}.tif" for i in range(7)]
    for p in paths:
        p.write_bytes(b"x")
    return paths


def test_globs_are_sorted_and_unique(files: list[Path], tmp_path: Path) -> None:
    got = expand_inputs([str(tmp_path / "s*.tif"), str(files[0])])
    assert got == sorted(files)


def test_empty_glob_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DvisUsageError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.jp2")])
    with pytest.raises(InputNotFoundError):
        expand_inputs([str(tmp_path / "absent.tif")])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 9])
def test_shards_partition_the_inputs(files: list[Path], n: int) -> None:
    parts = [shard(files, (k, n)) for k in range(1, n + 1)]
    assert sorted(p for part in parts for p in part) == sorted(files)
    assert sum(len(p) for p in parts) == len(files)


@pytest.mark.parametrize("bad", ["0/4", "5/4", "a/b", "3"])
def test_bad_shard(bad: str) -> None:
    with pytest.raises(DvisUsageError, match="--shard"):
        parse_shard(bad)


def test_output_rules(files: list[Path], tmp_path: Path) -> None:
    jobs = plan_jobs(
        [str(tmp_path / "s*.tif")], output=None, out_dir=tmp_path / "out", template="{stem}.gpkg"
    )
    assert [j.out.name for j in jobs] == [f"s{i}.gpkg" for i in range(7)]
    with pytest.raises(DvisUsageError, match="use --out-dir"):
        plan_jobs(
            [str(tmp_path / "s*.tif")], output=tmp_path / "a.gpkg", out_dir=None, template="{stem}"
        )
    with pytest.raises(DvisUsageError, match="same output"):
        plan_jobs([str(tmp_path / "s*.tif")], output=None, out_dir=tmp_path, template="x.gpkg")
    with pytest.raises(DvisUsageError, match="unknown field"):
        plan_jobs([str(files[0])], output=None, out_dir=tmp_path, template="{nope}.gpkg")
    one = plan_jobs([str(files[0])], output=tmp_path / "a.gpkg", out_dir=None, template="{stem}")
    assert one[0].out == tmp_path / "a.gpkg"
