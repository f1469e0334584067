"""Distributed inference: how work is split, that the split is exact, and the collectives (gloo)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from rasterio.windows import Window

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer import distributed as D
from dynamicvis_cli.infer.stitch_boxes import BoxMerger
from dynamicvis_cli.infer.stitch_dense import DenseStitcher
from dynamicvis_cli.infer.tiling import TileGrid


def test_split_evenly_and_rank_share() -> None:
    assert D.split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert D.split_evenly(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    items = list("abcdefg")
    shares = [D.rank_share(items, D.World(rank=r, size=3)) for r in range(3)]
    assert shares == [list("adg"), list("be"), list("cf")]


@pytest.mark.parametrize(("height", "tile", "overlap", "ranks"),
                         [(718, 128, 16, 2), (718, 128, 60, 3), (300, 128, 16, 4), (100, 128, 16, 2),
                          (1000, 64, 0, 5)])
def test_bands_cover_every_row_once_with_every_tile_that_touches_them(
    height: int, tile: int, overlap: int, ranks: int
) -> None:
    starts = TileGrid.plan(height, 50, tile, overlap).row_starts
    bands = [D.band(starts, height, tile, r, ranks, dense=True) for r in range(ranks)]
    rows = [y for b in bands for y in range(*b.pixels)]
    assert rows == list(range(height))
    for b in bands:
        for y in range(*b.pixels):
            covering = {i for i, s in enumerate(starts) if s <= y < s + tile}
            assert covering <= set(range(*b.run)), (b, y)
        boxes = D.band(starts, height, tile, bands.index(b), ranks, dense=False)
        assert boxes.run == boxes.owned == b.owned


def stitch(height: int, width: int, tile: int, overlap: int, mode: str, rows: tuple[int, int] | None,
           keep: tuple[int, int], tiles: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Stitch the tiles of tile rows ``rows`` (all: None), keeping the scene rows ``keep``."""
    out = np.full((2, height, width), np.nan, dtype=np.float32)

    def emit(w: Window, a: np.ndarray) -> None:
        if keep[0] <= w.row_off < keep[1]:
            out[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = a

    grid = TileGrid.plan(height, width, tile, overlap)
    st = DenseStitcher(height, width, 2, tile=tile, overlap=overlap, mode=mode,  # type: ignore[arg-type]
                       emit=emit, accumulate="float32", emit_columns=37)
    first, stop = rows if rows is not None else (0, len(grid.row_starts))
    for i in range(first, stop):
        for j in range(len(grid.col_starts)):
            if (i, j) in tiles:
                st.add(grid.window(i, j), tiles[(i, j)])
    st.close()
    return out


@pytest.mark.parametrize("mode", ["cosine", "linear", "centre"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_stitching_their_bands_give_the_one_process_result_bit_for_bit(mode: str, ranks: int) -> None:
    height, width, tile, overlap = 333, 170, 64, 20
    grid = TileGrid.plan(height, width, tile, overlap)
    rng = np.random.default_rng(0)
    tiles = {(i, j): rng.random((2, tile, tile), dtype=np.float32)  # every fifth tile skipped (nodata)
             for i in range(len(grid.row_starts)) for j in range(len(grid.col_starts)) if (i + j) % 5}
    whole = stitch(height, width, tile, overlap, mode, None, (0, height), tiles)
    parts = np.full_like(whole, np.nan)
    for r in range(ranks):
        b = D.band(grid.row_starts, height, tile, r, ranks, dense=True)
        got = stitch(height, width, tile, overlap, mode, b.run, b.pixels, tiles)
        parts[:, b.pixels[0] : b.pixels[1]] = got[:, b.pixels[0] : b.pixels[1]]
    np.testing.assert_array_equal(parts, whole)  # NaN where no tile gave weight, in both


def test_admit_then_add_admitted_elsewhere_equals_add() -> None:
    rng = np.random.default_rng(3)
    kw = {"tile": 64, "overlap": 16, "iou_threshold": 0.5, "score_threshold": 0.2}
    one, other, merged = BoxMerger(150, 150, **kw), BoxMerger(150, 150, **kw), BoxMerger(150, 150, **kw)
    for window in TileGrid.plan(150, 150, 64, 16).windows():
        xy = rng.uniform(0, 60, (12, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 20, (12, 2))], axis=1)
        scores, labels = rng.random(12).astype(np.float32), rng.integers(0, 2, 12)
        one.add(window, boxes, scores, labels)
        merged.add_admitted(window, other.admit(window, boxes, scores, labels))
    a, b = one.result(), merged.result()
    assert len(a) > 5
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_one_process_world_passes_through() -> None:
    w = D.World()
    assert w.main and not w.distributed
    assert w.gather(3) == [3] and w.all_gather("x") == ["x"] and w.broadcast({"a": 1}) == {"a": 1}
    w.agree(None)
    with pytest.raises(KeyError):
        w.agree(KeyError("k"))


def test_devices_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert D.parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    with pytest.raises(DvisUsageError, match="comma-separated"):
        D.parse_devices(" , ")
    assert D.rank_device("cpu", None) == "cpu" and D.rank_device("auto", ["cpu"]) == "cpu"
    with pytest.raises(DvisUsageError, match="one process cannot use several devices"):
        D.rank_device("auto", ["cpu", "cpu"])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.env_rank() == (1, 2, 1)
    assert D.rank_device("auto", ["cuda:3", "cuda:5"]) == "cuda:5"
    with pytest.raises(DvisUsageError, match="3 devices for 2 ranks"):
        D.rank_device("auto", ["cpu"] * 3)
    monkeypatch.setenv("DVIS_DIST_TIMEOUT", "soon")
    with pytest.raises(DvisUsageError, match="DVIS_DIST_TIMEOUT='soon'"):
        D._seconds("DVIS_DIST_TIMEOUT", 1.0)


def test_a_rank_that_never_starts_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    port = D.free_port()
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port), "DVIS_DIST_CONNECT_TIMEOUT": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    with pytest.raises(D.DistributedError, match=r"rank 0 of 2: could not reach the other ranks at "
                                                 rf"127.0.0.1:{port} within 2 s"):
        D.init_world("cpu")
    assert not torch.distributed.is_initialized()


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    world = D.init_world("cpu")
    result: dict[str, object] = {}
    try:
        result["gather"] = world.gather(rank * 10)
        result["all"] = world.all_gather(f"r{rank}")
        result["bcast"] = world.broadcast(f"from {rank}")
        if rank == 1:
            world.send(torch.arange(6, dtype=torch.uint8).reshape(2, 3), 0)
        else:
            got = torch.empty(2, 3, dtype=torch.uint8)
            world.recv(got, 1)
            result["recv"] = got.tolist()
        module = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(module.weight, float(rank))
        world.broadcast_module(module)
        result["weights"] = module.weight.flatten().tolist()
        world.agree(None)
        try:
            world.agree(FileExistsError("out.tif exists") if rank == 1 else None)
        except D.RankFailedError as exc:
            result["failed"] = (str(exc), exc.exit_code)
        except D.ReportedElsewhere as exc:
            result["failed"] = (str(exc), exc.exit_code)
    finally:
        D.shutdown()
    Path(folder, f"{rank}.txt").write_text(repr(result))


def test_collectives_on_two_gloo_processes(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, start_method="fork")
    r0, r1 = (eval(tmp_path.joinpath(f"{r}.txt").read_text()) for r in range(2))  # noqa: S307
    assert r0["gather"] == [0, 10] and r1["gather"] is None
    assert r0["all"] == r1["all"] == ["r0", "r1"]
    assert r0["bcast"] == r1["bcast"] == "from 0"
    assert r0["recv"] == [[0, 1, 2], [3, 4, 5]]
    assert r0["weights"] == r1["weights"] == [0.0] * 6  # rank 0's weights everywhere
    assert r0["failed"] == ("rank 1: internal error: FileExistsError: out.tif exists", 1)
    assert r1["failed"][1] == 1 and r1["failed"][0].startswith("reported by rank 0")
