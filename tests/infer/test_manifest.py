"""Run manifests: what is recorded, what counts as done, what is refused, concurrent appends."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.manifest import Manifest, RunKey, file_sha256, remove_stale_temporaries

KEY = RunKey("tiny", "sha256:abc", {"tile_size": 128, "tta": "none", "bands": [1, 2, 3]})


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    src, out = tmp_path / "scene.tif", tmp_path / "out" / "scene.seg.tif"
    src.write_bytes(b"input pixels")
    out.parent.mkdir()
    out.write_bytes(b"class ids")
    return src, out


def test_a_recorded_input_is_done_until_its_output_changes(tmp_path: Path, files: tuple[Path, Path]) -> None:
    src, out = files
    path = tmp_path / "run.jsonl"
    book = Manifest(path, KEY)
    assert book.decide(src, [out]).reason == "not in the manifest"
    line = book.record(src, [out], rank=0)
    assert line["outputs"] == {str(out.resolve()): file_sha256(out)} and line["settings"]["tile_size"] == 128
    assert json.loads(path.read_text()) == line  # one line, the whole key in it

    again = Manifest(path, KEY)
    assert again.decide(src, [out]).done
    out.write_bytes(b"class ids, edited")
    assert "differs from the recorded checksum" in again.decide(src, [out]).reason
    out.unlink()
    assert again.decide(src, [out]).reason == f"{out} no longer exists"
    other = tmp_path / "other.tif"
    assert "not among its recorded outputs" in again.decide(src, [other]).reason


def test_a_changed_input_is_redone(tmp_path: Path, files: tuple[Path, Path]) -> None:
    src, out = files
    Manifest(tmp_path / "run.jsonl", KEY).record(src, [out])
    src.write_bytes(b"new input pixels")
    decision = Manifest(tmp_path / "run.jsonl", KEY).decide(src, [out])
    assert decision.reason == "input changed since it was recorded"


def test_another_model_or_settings_is_refused_unless_forced(tmp_path: Path, files: tuple[Path, Path]) -> None:
    src, out = files
    path = tmp_path / "run.jsonl"
    Manifest(path, KEY).record(src, [out])
    other = RunKey("tiny", "sha256:abc", {**KEY.settings, "tile_size": 256})
    refused = r"run.jsonl: written by a different run \(tile_size: 128 → 256\).*--force"
    with pytest.raises(DvisUsageError, match=refused):
        Manifest(path, other)
    with pytest.raises(DvisUsageError, match="weights_sha256: sha256:abc → sha256:def"):
        Manifest(path, RunKey("tiny", "sha256:def", KEY.settings))
    forced = Manifest(path, other, force=True)
    assert forced.ignored == 1 and forced.decide(src, [out]).reason == "not in the manifest"
    forced.record(src, [out])
    # Now both keys are in the file: each run sees its own lines only when forced.
    assert Manifest(path, other, force=True).decide(src, [out]).done
    assert Manifest(path, KEY, force=True).decide(src, [out]).done


def test_a_torn_last_line_is_ignored_and_garbage_is_refused(tmp_path: Path, files: tuple[Path, Path]) -> None:
    src, out = files
    path = tmp_path / "run.jsonl"
    Manifest(path, KEY).record(src, [out])
    with open(path, "a") as f:
        f.write('{"manifest": 1, "input": "/x", "outp')  # killed mid-write
    book = Manifest(path, KEY)
    assert book.ignored == 1 and book.decide(src, [out]).done
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(DvisUsageError, match="line 1 is not a dvis manifest line"):
        Manifest(path, KEY)
    with pytest.raises(DvisUsageError, match="names a folder"):
        Manifest(tmp_path, KEY)


def _append_many(args: tuple[str, str, int]) -> None:
    path, folder, worker = args
    book = Manifest(Path(path), KEY)
    for i in range(40):
        src = Path(folder) / f"in-{worker}-{i}.tif"
        src.write_bytes(b"x" * (i + 1))
        book.record(src, [src], worker=worker, padding="p" * 3000)  # lines > a pipe buffer


def test_concurrent_appends_give_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(path), str(tmp_path), w) for w in range(4)])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 160
    assert len(Manifest(path, KEY).entries) == 160


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "scene.seg.tif"
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = [tmp_path / f".scene.seg.tif.tmp-{dead}-0123abcd", tmp_path / ".scene.seg.tif.part-89abcdef.tif"]
    live = tmp_path / f".scene.seg.tif.tmp-{os.getpid()}-feedbeef"
    unrelated = tmp_path / f".other.tif.tmp-{dead}-0123abcd"
    for p in [*stale, live, unrelated]:
        p.write_bytes(b"")
    assert sorted(remove_stale_temporaries(out)) == sorted(stale[:1])  # a live writer keeps .part
    live.unlink()
    assert remove_stale_temporaries(out) == [stale[1]]
    assert unrelated.exists()
