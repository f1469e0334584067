"""WebDataset shards (``dvis data shard``) and their stream (``ShardStream``) on real NWPU VHR-10
and SSDD images: round trip, rank split, and bad shards (truncated, path traversal, boxes outside
the image, unknown categories) that are skipped and counted, never a crash."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynamicvis_cli.data.augment import AugmentConfig, window_boxes
from dynamicvis_cli.data.discover import open_dataset
from dynamicvis_cli.data.records import DatasetSpec, Record
from dynamicvis_cli.errors import DatasetError, DvisUsageError, OutputExistsError
from tests.data.test_convert import nwpu_subset
from tests.train.fixtures import make_geo_trees, shared

pytestmark = pytest.mark.data

TILE = 128
NORM: dict[str, Any] = {"bands": [1, 2, 3], "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}
STEMS = ("003", "005", "009", "011")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def nwpu(tmp_path: Path) -> DatasetSpec:
    return open_dataset(nwpu_subset(tmp_path / "nwpu", STEMS), "detect")


def stream(urls: Any, **kw: Any) -> Any:
    from dynamicvis_cli.data.shards import ShardStream

    opts: dict[str, Any] = {"classes": None, "tile_size": TILE, "augment": None, "shuffle": 0, **NORM}
    opts.update(kw)
    return ShardStream(urls, **opts)


def expected_boxes(rec: Record, tile: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """A record's boxes in the unaugmented item: the image centred in a square, resized to tile."""
    from dynamicvis_cli.data.shards import fit_window

    assert rec.boxes is not None and rec.labels is not None
    col, row, side, _ = fit_window(rec.width, rec.height)
    assert side == max(rec.width, rec.height) and abs((side - rec.width) / 2 + col) <= 0.5
    assert abs((side - rec.height) / 2 + row) <= 0.5  # centred
    direct = (rec.boxes - [col, row, col, row]) * (tile / side)
    boxes, labels, keep = window_boxes(rec.boxes, rec.labels, (col, row, side, side), tile, 0.5)
    assert np.allclose(boxes, direct[keep])
    return boxes, labels


def write_tar(path: Path, members: list[tuple[str, bytes]], links: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def jpg(stem: str = "003") -> bytes:
    return shared("nwpu_vhr10", "train", "images", f"{stem}.jpg").read_bytes()


def meta(boxes: list[list[int]], cats: list[str], w: int = 889, h: int = 803) -> bytes:
    return json.dumps({"width": w, "height": h, "boxes": boxes, "categories": cats}).encode()


# -- round trip -------------------------------------------------------------------------------


def test_round_trip_matches_the_labels_and_taskdataset(nwpu: DatasetSpec, tmp_path: Path) -> None:
    import torch

    from dynamicvis_cli.data.dataset import TaskDataset
    from dynamicvis_cli.data.shards import fit_window, write_shards

    out = tmp_path / "shards"
    summary = write_shards(nwpu, out, samples_per_shard=3)
    assert summary["shards"] == 2 and summary["samples"] == 4
    assert summary["boxes"] == sum(len(r.labels) for r in nwpu.records if r.labels is not None)
    index = json.loads((out / "dataset.json").read_text())
    assert index["classes"] == nwpu.classes and index["samples"] == 4 and index["format"] == "nwpu"
    assert index["shards"] == ["shard-000000.tar", "shard-000001.tar"] and "dvis" in index
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert tar.getnames()[:2] == ["00000000.jpg", "00000000.json"]
        image = tar.extractfile("00000000.jpg").read()  # type: ignore[union-attr]
        first = json.loads(tar.extractfile("00000000.json").read())  # type: ignore[union-attr]
    assert image == nwpu.records[0].image.read_bytes()  # the original bytes
    assert first["source"] == str(nwpu.records[0].image)
    assert np.allclose(first["boxes"], nwpu.records[0].boxes)  # type: ignore[arg-type]

    ds = stream(out)
    assert ds.classes == nwpu.classes and ds.num_samples == 4
    items = list(ds)
    assert len(items) == 4 and ds.stats["samples"] == 4
    ref = TaskDataset(nwpu, tile_size=TILE, augment=None, **NORM)
    for rec, item in zip(nwpu.records, items):
        assert set(item) == {"image", "boxes", "labels"}
        assert item["image"].shape == (3, TILE, TILE) and item["image"].dtype == torch.float32
        assert item["boxes"].dtype == torch.float32 and item["labels"].dtype == torch.int64
        boxes, labels = expected_boxes(rec)
        assert np.allclose(item["boxes"].numpy(), boxes, atol=1e-4)
        assert np.array_equal(item["labels"].numpy(), labels)
        ex, _ = ref.example(rec, fit_window(rec.width, rec.height), TILE)  # same pixels as TaskDataset
        assert torch.allclose(item["image"], ref._to_item(ex, rec)["image"], atol=1e-6)
    assert all(v == 0 for k, v in ds.stats.items() if k != "samples")


def test_ssdd_sar_shards_and_webdataset_reads_them(tmp_path: Path) -> None:
    import webdataset as wds

    from dynamicvis_cli.data.shards import write_shards

    root = shared("ssdd", "train")
    spec = open_dataset(root / "instances_train.json", "detect", image_root=root / "JPEGImages")
    write_shards(spec, tmp_path / "ssdd")
    items = list(stream(tmp_path / "ssdd" / "shard-{000000..000000}.tar"))
    ships = [len(r.boxes) for r in spec.records]  # type: ignore[arg-type]
    assert [len(it["labels"]) for it in items] == ships == [1, 3]
    for rec, item in zip(spec.records, items):
        assert np.allclose(item["boxes"].numpy(), expected_boxes(rec)[0], atol=1e-4)
        assert (item["labels"] == 0).all()  # ship
    samples = list(wds.WebDataset(str(tmp_path / "ssdd" / "shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["00000000", "00000001"]
    assert json.loads(samples[1]["json"])["categories"] == ["ship"] * 3


def test_augmented_items_are_valid_and_seeded(nwpu: DatasetSpec, tmp_path: Path) -> None:
    import torch

    from dynamicvis_cli.data.shards import write_shards

    write_shards(nwpu, tmp_path / "s", samples_per_shard=2)
    aug = AugmentConfig(object_crop=1.0)  # every window around an object
    a = list(stream(tmp_path / "s", augment=aug, shuffle=3, seed=1))
    again = stream(tmp_path / "s", augment=aug, shuffle=3, seed=1)
    b = list(again)
    c = list(again)  # the second pass is epoch 1
    assert len(a) == len(b) == len(c) == 4
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["boxes"], y["boxes"])
    assert any(not torch.equal(x["image"], z["image"]) for x, z in zip(a, c))
    for it in a + c:
        assert it["image"].shape == (3, TILE, TILE) and it["boxes"].shape[1] == 4
        assert len(it["boxes"]) == len(it["labels"])
        assert (it["boxes"] >= 0).all() and (it["boxes"] <= TILE).all()
        assert ((it["boxes"][:, 2:] - it["boxes"][:, :2]) >= 1).all()
    assert all(len(it["boxes"]) > 0 for it in a + c)


def test_geo_chips_are_stored_as_windows(tmp_path: Path) -> None:
    import rasterio
    from rasterio.io import MemoryFile

    from dynamicvis_cli.data.shards import write_shards

    spec = open_dataset(make_geo_trees(tmp_path / "geo", chip=300), "detect")
    summary = write_shards(spec, tmp_path / "geo_shards")
    assert summary["samples"] == len(spec.records) == 4
    with tarfile.open(tmp_path / "geo_shards" / "shard-000000.tar") as tar:
        data = tar.extractfile("00000001.tif").read()  # type: ignore[union-attr]
        info = json.loads(tar.extractfile("00000001.json").read())  # type: ignore[union-attr]
    assert info["region"] == [300, 0, 300, 300] and (info["width"], info["height"]) == (100, 300)
    with MemoryFile(data) as mem, mem.open() as chip, rasterio.open(spec.records[1].image) as scene:
        assert chip.crs == scene.crs and chip.nodata == scene.nodata  # nodata kept: a GeoTIFF
        assert chip.transform == scene.window_transform(rasterio.windows.Window(300, 0, 100, 300))
        assert np.array_equal(chip.read(), scene.read(window=rasterio.windows.Window(300, 0, 100, 300)))
    assert all((np.array(info["boxes"])[:, 2:] <= [100, 300]).all() for _ in [0])
    items = list(stream(tmp_path / "geo_shards", tile_size=100))
    assert len(items) == 4 and sum(len(it["boxes"]) for it in items) > 0


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_window_of_a_jpeg_is_stored_as_png(nwpu: DatasetSpec) -> None:
    from rasterio.io import MemoryFile

    from dynamicvis_cli.data.io import read_image
    from dynamicvis_cli.data.shards import encode_record

    rec = nwpu.records[0]
    chip = Record(rec.image, rec.width, rec.height, boxes=rec.boxes, labels=rec.labels,
                  region=(10, 20, 64, 48))
    ext, data, w, h, origin = encode_record(chip)
    assert (ext, w, h, origin) == ("png", 64, 48, (10, 20))
    with MemoryFile(data) as mem, mem.open() as ds:
        assert ds.driver == "PNG" and ds.count == 3
        raw, _, _ = read_image(rec.image, (10, 20, 64, 48), [1, 2, 3])
        assert np.array_equal(ds.read().astype(np.float32), raw)


# -- ranks and workers ------------------------------------------------------------------------


def test_ranks_read_disjoint_shards_covering_everything(nwpu: DatasetSpec, tmp_path: Path) -> None:
    from dynamicvis_cli.data.shards import read_shard, write_shards

    write_shards(nwpu, tmp_path / "s", samples_per_shard=1)  # 4 shards
    ranks = [stream(str(tmp_path / "s" / "shard-*.tar"), rank=r, world=2, shuffle=10, seed=3) for r in (0, 1)]
    for epoch in (0, 1, 2):
        seen = [r.shards_for(epoch) for r in ranks]
        assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 2
        assert sorted(seen[0] + seen[1]) == ranks[0].urls
    orders = [ranks[0].shards_for(e) for e in range(4)]
    assert any(o != orders[0] for o in orders)  # reshuffled per epoch
    keys = [[s.key for u in r.shards_for(0) for s in read_shard(u, dict.fromkeys(r.stats, 0))] for r in ranks]
    assert sorted(keys[0] + keys[1]) == [f"{i:08d}" for i in range(4)] and not set(keys[0]) & set(keys[1])
    counts = [len(list(r)) for r in ranks]
    assert counts == [2, 2] == [r.samples_for(0) for r in ranks]
    with pytest.raises(DvisUsageError, match="4 shard"):
        stream(tmp_path / "s", rank=0, world=8)


def test_dataloader_workers_split_the_shards(nwpu: DatasetSpec, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from dynamicvis_cli.data.dataset import collate
    from dynamicvis_cli.data.shards import write_shards

    write_shards(nwpu, tmp_path / "s", samples_per_shard=1)
    loader = DataLoader(stream(tmp_path / "s", tile_size=64), batch_size=1, num_workers=2,
                        collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 4
    got = sorted(b["boxes"][0].numpy().round(3).tolist() for b in batches)
    want = sorted(expected_boxes(r, 64)[0].round(3).tolist() for r in nwpu.records)
    assert np.allclose(np.concatenate(got), np.concatenate(want), atol=2e-3)


# -- bad shards -------------------------------------------------------------------------------


def test_truncated_and_garbage_shards_are_skipped_and_counted(nwpu: DatasetSpec, tmp_path: Path) -> None:
    from dynamicvis_cli.data.shards import write_shards

    write_shards(nwpu, tmp_path / "s", samples_per_shard=2)
    first = tmp_path / "s" / "shard-000000.tar"
    data = first.read_bytes()
    first.write_bytes(data[: len(data) * 2 // 3])  # breaks off inside the second sample
    garbage = tmp_path / "s" / "shard-000002.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    lines: list[str] = []
    ds = stream([tmp_path / "s" / "shard-000000.tar", tmp_path / "s" / "shard-000001.tar", garbage],
                log=lines.append)
    items = list(ds)
    assert len(items) == 3  # sample 0 of the cut shard, then the whole second shard
    assert ds.stats["samples"] == 3 and ds.stats["skipped_corrupt"] == 2
    assert any("shard-000000.tar" in ln and "truncated" in ln for ln in lines)
    assert any("shard-000002.tar" in ln for ln in lines)
    assert "skipped_corrupt 2" in lines[-1] and "samples 3" in lines[-1]  # the end-of-pass summary
    first.write_bytes(data[: (len(data) // 2 // 512) * 512])  # cut at a block boundary: no error raised
    ds = stream(tmp_path / "s" / "shard-{000000..000001}.tar", log=lines.append)
    assert len(list(ds)) <= 3 and ds.stats["skipped_corrupt"] >= 1


def test_path_traversal_members_are_skipped_never_extracted(tmp_path: Path) -> None:
    good = meta([[10, 10, 60, 50]], ["airplane"])
    shard = write_tar(tmp_path / "evil.tar", [
        ("00000000.jpg", jpg()), ("00000000.json", good),
        ("../evil.jpg", jpg()), ("../evil.json", good),
        ("/tmp/abs.jpg", jpg()), ("/tmp/abs.json", good),
        ("a/../../x.jpg", jpg()), ("a/../../x.json", good),
        ("00000002.jpg", jpg()), ("00000002.json", good),
    ], links=("00000003.json",))
    before = set(os.listdir(tmp_path.parent))
    lines: list[str] = []
    ds = stream(shard, classes=["airplane"], log=lines.append)
    items = list(ds)
    assert len(items) == 2 and ds.stats["samples"] == 2
    assert ds.stats["skipped_unsafe"] == 4  # ../evil, /tmp/abs, a/../../x, the symlink
    assert set(os.listdir(tmp_path.parent)) == before and not (tmp_path / "evil.json").exists()
    assert any("'../evil'" in ln and "unsafe" in ln for ln in lines)


def test_boxes_outside_the_image_and_unknown_categories(tmp_path: Path) -> None:
    from dynamicvis_cli.data.shards import fit_window

    w, h = 889, 803  # NWPU 003.jpg
    boxes = [[-20, 10, 60, 50],      # clipped to x0 = 0
             [850, 700, 1200, 900],  # clipped at the right and bottom edges
             [1000, 10, 1100, 50],   # wholly outside: dropped
             [100, 100, 100, 140],   # no width: dropped
             [200, 200, 260, 260],   # unknown category: dropped
             [300, 300, 380, 360]]   # kept as is
    cats = ["airplane", "ship", "ship", "airplane", "dragon", "ship"]
    shard = write_tar(tmp_path / "s.tar", [("00000000.jpg", jpg()),
                                           ("00000000.json", meta(boxes, cats, w, h))])
    ds = stream(shard, classes=["airplane", "ship"])
    (item,) = list(ds)
    assert ds.stats["boxes_clipped"] == 2 and ds.stats["boxes_dropped"] == 2
    assert ds.stats["unknown_categories"] == 1
    col, row, side, _ = fit_window(w, h)
    want = np.array([[0, 10, 60, 50], [850, 700, w, h], [300, 300, 380, 360]], dtype=np.float64)
    want = (want - [col, row, col, row]) * (TILE / side)
    assert np.allclose(item["boxes"].numpy(), want, atol=1e-4)
    assert item["labels"].tolist() == [0, 1, 1]
    with pytest.raises(DatasetError, match=r"s\.tar: sample '00000000': category 'dragon' is not in"):
        list(stream(shard, classes=["airplane", "ship"], strict=True))


def test_undecodable_samples_are_skipped(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "s.tar", [
        ("00000000.jpg", b"\xff\xd8 not a jpeg"), ("00000000.json", meta([[1, 1, 9, 9]], ["ship"])),
        ("00000001.jpg", jpg()),  # no json
        ("00000002.jpg", jpg()), ("00000002.json", b"{not json"),
        ("00000003.jpg", jpg()), ("00000003.json", meta([[1, 1, 9, 9]], ["ship"])),
    ])
    ds = stream(shard, classes=["ship"])
    assert len(list(ds)) == 1 and ds.stats["skipped_corrupt"] == 3


def test_stream_errors_at_construction(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="shard does not exist"):
        stream(tmp_path / "missing-{0..1}.tar", classes=["a"])
    with pytest.raises(DatasetError, match="no shard matches"):
        stream(str(tmp_path / "*.tar"), classes=["a"])
    shard = write_tar(tmp_path / "s.tar", [("00000000.jpg", jpg())])
    with pytest.raises(DatasetError, match="classes not given"):
        stream(shard)
    with pytest.raises(DvisUsageError, match="same"):
        stream(shard, classes=["a"], bands=[1, 2])


# -- writing ----------------------------------------------------------------------------------


def test_write_shards_refuses_existing_output(nwpu: DatasetSpec, tmp_path: Path) -> None:
    from dynamicvis_cli.data.shards import write_shards

    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    write_shards(nwpu, out, samples_per_shard=10)
    with pytest.raises(OutputExistsError):
        write_shards(nwpu, out)
    result = write_shards(nwpu, out, samples_per_shard=1, overwrite=True)
    assert result["shards"] == 4 and sorted(os.listdir(out)) == ["dataset.json"] + [
        f"shard-{i:06d}.tar" for i in range(4)]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary leftovers
    with pytest.raises(DvisUsageError):
        write_shards(nwpu, tmp_path / "x", samples_per_shard=0)


def dvis(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dynamicvis_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_data_shard_command(tmp_path: Path) -> None:
    root = nwpu_subset(tmp_path / "nwpu", STEMS[:3])
    run = dvis("data", "shard", root, "-o", tmp_path / "out", "--samples-per-shard", 2)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["command"] == "data shard" and summary["from"] == "nwpu"
    assert summary["shards"] == 2 and summary["samples"] == 3 and summary["boxes"] > 0
    assert "shard-000001.tar: 1 samples" in run.stderr
    again = dvis("data", "shard", root, "-o", tmp_path / "out")
    assert again.returncode == 2 and "output exists; pass --overwrite" in again.stderr
    assert again.stdout == ""
    missing = dvis("data", "shard", tmp_path / "nope", "-o", tmp_path / "out2")
    assert missing.returncode == 2 and "nope: dataset does not exist" in missing.stderr
    assert not (tmp_path / "out2").exists()
