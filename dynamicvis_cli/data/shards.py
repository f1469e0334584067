"""WebDataset shards of detection sets: written once, streamed by ``dvis pretrain``.

Layout (the WebDataset convention: consecutive tar members sharing a key form one sample)::

    OUT/dataset.json          {"classes": [...], "shards": [...], "samples": N, "format": ...,
                               "dvis": version, "shard_samples": [n0, n1, ...]}
    OUT/shard-000000.tar      00000000.jpg  00000000.json  00000001.png  00000001.json  ...
    OUT/shard-000001.tar      ...

Each ``<key>.json`` is ``{"width", "height", "boxes": [[x0, y0, x1, y1], ...], "categories":
[names], "source": path}`` with boxes in the stored image's pixels (a chip adds ``"region"``:
its col, row, width, height in the source). The image is the original
file's bytes when a record is a whole JPEG/PNG/TIFF; a window of a scene (``record.region``, the
geo format) or another file type is re-encoded: PNG when it is 8-bit with 1 or 3 bands (2 or 4
when the last is alpha) and no nodata, else a deflate GeoTIFF keeping CRS, transform and nodata.

:class:`ShardStream` reads shards sequentially (one open tar per reader, a bounded shuffle
buffer, no index of the samples) and yields items shaped exactly like a training item of
:class:`~dynamicvis_cli.data.dataset.TaskDataset` for ``detect``, through the same windowing,
augmentation and normalisation. Tar members are only ever read into memory, never extracted.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.windows import Window
from torch.utils.data import IterableDataset, get_worker_info

from dynamicvis_cli._deps import require
from dynamicvis_cli.data.augment import AugmentConfig, Example, augment, sample_window, window_boxes
from dynamicvis_cli.data.dataset import _resize, _resize_nearest
from dynamicvis_cli.data.records import DatasetSpec, Record
from dynamicvis_cli.errors import DatasetError, DvisError, DvisUsageError, OutputExistsError
from dynamicvis_cli.geo.atomic import atomic_output
from dynamicvis_cli.geo.read import RasterSource, error_text, normalise

Logger = Callable[[str], None]

_logger = logging.getLogger(__name__)

SHARD_NAME = "shard-{:06d}.tar"
META_NAME = "dataset.json"
#: Source suffixes copied byte for byte, and the extension they get in the shard.
_COPY_EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".tif": "tif", ".tiff": "tif"}
#: Image extensions a sample may carry (first found wins).
IMAGE_EXTS = ("jpg", "jpeg", "png", "tif", "tiff")
#: A chip of a scene keeps a box cut by its edge when this much of the box lies inside it.
CHIP_MIN_VISIBLE = 0.5
#: Tar members larger than this are not read (a corrupt header or not a dvis shard).
MAX_MEMBER_BYTES = 1 << 30

STAT_KEYS = ("samples", "skipped_corrupt", "skipped_unsafe", "boxes_clipped", "boxes_dropped",
             "unknown_categories")


def _emit(log: Logger | None, line: str, *, level: int = logging.WARNING) -> None:
    if log is not None:
        log(line)
    else:
        _logger.log(level, line)


# -- writing ---------------------------------------------------------------------------------


def check_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """An existing non-empty ``out_dir`` (or a file there) is kept unless ``overwrite``.

    Raises:
        OutputExistsError: it exists, is not an empty folder, and ``overwrite`` is False.
    """
    if overwrite or not (out_dir.exists() or out_dir.is_symlink()):
        return
    if out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir()):
        return
    raise OutputExistsError(out_dir)


def _clip_boxes(boxes: NDArray[np.float64], origin: tuple[int, int], width: int, height: int,
                min_visible: float) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """Boxes shifted by ``-origin`` and clipped to ``width`` × ``height``; kept when they keep an
    area and at least ``min_visible`` of it. Returns the boxes and the kept indexes."""
    b = boxes - np.array([origin[0], origin[1], origin[0], origin[1]], dtype=np.float64)
    c = np.clip(b, 0, [width, height, width, height])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inside = (c[:, 2] - c[:, 0]).clip(0) * (c[:, 3] - c[:, 1]).clip(0)
    keep = np.flatnonzero((inside > 0) & (inside >= min_visible * np.maximum(area, 1e-9)))
    return c[keep], keep


def _png_ok(ds: Any) -> bool:
    """8-bit, no nodata, and bands a PNG reads back as the same bands (a 2nd/4th band is alpha)."""
    from rasterio.enums import ColorInterp

    if ds.nodata is not None or any(d != "uint8" for d in ds.dtypes):
        return False
    if ds.count in (1, 3):
        return True
    return ds.count in (2, 4) and ds.colorinterp[-1] == ColorInterp.alpha


def _encode_window(path: Path, region: tuple[int, int, int, int] | None) -> tuple[str, bytes, int, int,
                                                                                 tuple[int, int]]:
    """Read ``region`` (None: all) of an image and encode it as PNG or GeoTIFF bytes.

    Returns:
        (extension, bytes, width, height, (col, row) of the stored image in the source).

    Raises:
        DatasetError: the image cannot be read or the region lies outside it (names the file).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                col, row, w, h = region if region is not None else (0, 0, ds.width, ds.height)
                c0, r0 = max(col, 0), max(row, 0)
                c1, r1 = min(col + w, ds.width), min(row + h, ds.height)
                if c1 <= c0 or r1 <= r0:
                    raise DatasetError(path, f"region {region} lies outside the {ds.width}x{ds.height} image")
                win = Window(c0, r0, c1 - c0, r1 - r0)
                data = ds.read(window=win)
                png = _png_ok(ds)
                profile: dict[str, Any] = {"driver": "PNG", "width": c1 - c0, "height": r1 - r0,
                                           "count": ds.count, "dtype": ds.dtypes[0]}
                if not png:
                    profile.update(driver="GTiff", compress="deflate", nodata=ds.nodata,
                                   crs=ds.crs, transform=ds.window_transform(win))
                    if len(set(ds.dtypes)) > 1:
                        profile["dtype"] = np.result_type(*ds.dtypes).name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile() as mem:
                with mem.open(**profile) as dst:
                    dst.write(data.astype(profile["dtype"], copy=False))
                encoded = mem.read()
    except RasterioError as exc:
        raise DatasetError(path, f"image cannot be read for sharding ({error_text(exc, path)})") from exc
    return ("png" if png else "tif"), bytes(encoded), c1 - c0, r1 - r0, (c0, r0)


def encode_record(rec: Record) -> tuple[str, bytes, int, int, tuple[int, int]]:
    """The image of a record as it goes into a shard.

    Returns:
        (extension, encoded bytes, width, height, (col, row) of the stored image in the source).

    Raises:
        DatasetError: the image cannot be read (names the file).
    """
    ext = _COPY_EXT.get(rec.image.suffix.lower())
    if rec.region is None and ext is not None:
        try:
            return ext, rec.image.read_bytes(), rec.width, rec.height, (0, 0)
        except OSError as exc:
            raise DatasetError(rec.image, f"image cannot be read ({exc.strerror or exc})") from exc
    return _encode_window(rec.image, rec.region)


def _sample(rec: Record, key: str, classes: Sequence[str]) -> tuple[dict[str, Any], int, int]:
    """The WebDataset sample of one record, the number of its boxes and of those left out (outside
    the stored image, or mostly outside a chip).

    Raises:
        DatasetError: the image cannot be read (names the file).
    """
    ext, data, w, h, origin = encode_record(rec)
    boxes = rec.boxes if rec.boxes is not None else np.zeros((0, 4))
    labels = rec.labels if rec.labels is not None else np.zeros(0, dtype=np.int64)
    min_visible = CHIP_MIN_VISIBLE if rec.region is not None else 0.0
    kept, keep = _clip_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), origin, w, h, min_visible)
    meta = {"width": w, "height": h, "boxes": [[round(float(v), 4) for v in b] for b in kept],
            "categories": [classes[int(k)] for k in labels[keep]], "source": str(rec.image)}
    if rec.region is not None:
        meta["region"] = list(rec.region)
    sample = {"__key__": key, ext: data, "json": json.dumps(meta).encode("utf-8")}
    return sample, len(keep), len(boxes) - len(keep)


def write_shards(spec: DatasetSpec, out_dir: Path, *, samples_per_shard: int = 1000,
                 overwrite: bool = False, log: Logger | None = None) -> dict[str, Any]:
    """Pack every record of a detection set into WebDataset tar shards in ``out_dir``.

    Samples get keys ``00000000``, ``00000001``, … in record order; shards are
    ``shard-000000.tar``, … of ``samples_per_shard`` samples each, plus ``dataset.json``. The
    folder is built under a temporary name beside ``out_dir`` and renamed when complete.

    Args:
        spec: a ``detect`` (or ``instance``: boxes only) dataset from
            :func:`~dynamicvis_cli.data.discover.open_dataset`.
        out_dir: the output folder; an existing empty folder is replaced.
        samples_per_shard: samples per tar file (the last one may hold fewer).
        overwrite: replace an existing non-empty ``out_dir``.
        log: called with one line per finished shard (default: :mod:`logging`, INFO).

    Returns:
        ``{"output", "format", "classes", "shards", "samples", "boxes", "boxes_outside", "bytes"}``
        (``boxes_outside``: boxes left out for lying outside the stored image or chip).

    Raises:
        DvisUsageError: ``samples_per_shard`` < 1.
        DatasetError: not a detection set, or a source image cannot be read (names the file).
        OutputExistsError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
    """
    wds = require("webdataset", extra=None, purpose="writing WebDataset shards")
    from dynamicvis_cli._version import __version__

    out_dir = Path(out_dir)
    if samples_per_shard < 1:
        raise DvisUsageError(f"samples per shard must be at least 1, not {samples_per_shard}")
    if spec.task not in ("detect", "instance"):
        raise DatasetError(spec.root, f"shards hold boxes; this is a {spec.task} dataset")
    check_out_dir(out_dir, overwrite=overwrite)
    names: list[str] = []
    counts: list[int] = []
    boxes = outside = 0
    with atomic_output(out_dir, overwrite=True, directory=True) as tmp:
        for start in range(0, len(spec.records), samples_per_shard):
            name = SHARD_NAME.format(len(names))
            chunk = spec.records[start : start + samples_per_shard]
            with open(tmp / name, "wb") as f:
                writer = wds.TarWriter(f, encoder=False)
                for n, rec in enumerate(chunk, start):
                    sample, kept, left_out = _sample(rec, f"{n:08d}", spec.classes)
                    writer.write(sample)
                    boxes += kept
                    outside += left_out
                writer.close()
            names.append(name)
            counts.append(len(chunk))
            _emit(log, f"{name}: {len(chunk)} samples", level=logging.INFO)
        meta = {"classes": list(spec.classes), "shards": names, "samples": len(spec.records),
                "format": spec.format, "dvis": __version__, "shard_samples": counts}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        size = sum((tmp / n).stat().st_size for n in names)
    return {"output": str(out_dir), "format": spec.format, "classes": list(spec.classes),
            "shards": len(names), "samples": len(spec.records), "boxes": boxes,
            "boxes_outside": outside, "bytes": size}


# -- reading ---------------------------------------------------------------------------------


def _read_meta(folder: Path) -> dict[str, Any] | None:
    path = folder / META_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("shards"), list):
        raise DatasetError(path, "not a dvis shard index (no 'shards' list)")
    return meta


def expand_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from paths, globs, brace patterns (``shard-{000000..000003}.tar``, ``::``
    separated lists, as WebDataset reads them) or folders (their ``dataset.json``'s shards, else
    their ``*.tar``).

    Raises:
        DatasetError: nothing matches, a folder has no shards, or a listed shard does not exist.
    """
    braceexpand = require("braceexpand", extra=None, purpose="expanding shard patterns")
    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    out: list[str] = []
    for item in items:
        for part in str(item).split("::"):
            for url in braceexpand.braceexpand(part):
                out.extend(_expand_one(url))
    if not out:
        raise DatasetError(urls, "no shards given")
    for url in out:
        if not Path(url).is_file():
            raise DatasetError(url, "shard does not exist")
    return out


def _expand_one(url: str) -> list[str]:
    path = Path(url)
    if path.is_dir():
        meta = _read_meta(path)
        if meta is not None:
            return [str(path / str(s)) for s in meta["shards"]]
        found = sorted(str(p) for p in path.iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
        if not found:
            raise DatasetError(path, "no shards (.tar) and no dataset.json in this folder")
        return found
    if glob.has_magic(url):
        found = sorted(glob.glob(url))
        if not found:
            raise DatasetError(url, "no shard matches this pattern")
        return found
    return [url]


def _is_unsafe(member: tarfile.TarInfo) -> bool:
    """An absolute name, a ``..`` component or a link: never a member of a dvis sample."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    if ".." in name.split("/"):
        return True
    return member.issym() or member.islnk() or not (member.isreg() or member.isdir())


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


@dataclass
class RawSample:
    """One sample as read from a shard: its tar members' bytes by extension."""

    shard: str
    key: str
    files: dict[str, bytes] = field(default_factory=dict)
    unsafe: bool = False


def _iter_members(url: str) -> Iterator[RawSample]:
    """Samples of one tar, in order; unsafe members mark their sample."""
    current: RawSample | None = None
    with open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if member.isdir():
                continue
            key, ext = _split_name(member.name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = RawSample(url, key)
            if _is_unsafe(member):
                current.unsafe = True
                continue
            if member.size > MAX_MEMBER_BYTES:
                raise tarfile.ReadError(f"member {member.name} claims {member.size} bytes")
            fobj = tar.extractfile(member)
            current.files[ext] = fobj.read() if fobj is not None else b""
    if current is not None:
        yield current


def read_shard(url: str, stats: dict[str, int], *, expected: int | None = None,
               log: Logger | None = None) -> Iterator[RawSample]:
    """The samples of one shard; a corrupt or truncated shard ends early, logged and counted.

    Samples with an unsafe member name (absolute, ``..``, links) are counted in
    ``stats["skipped_unsafe"]`` and not yielded. A shard that breaks off (or holds fewer samples
    than ``expected``, from ``dataset.json``) adds one to ``stats["skipped_corrupt"]``.
    """
    n = 0
    try:
        for raw in _iter_members(url):
            n += 1
            if raw.unsafe:
                stats["skipped_unsafe"] += 1
                _emit(log, f"{url}: sample '{raw.key}' skipped: unsafe member name (absolute path, "
                      "'..' or a link)")
                continue
            yield raw
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        stats["skipped_corrupt"] += 1
        _emit(log, f"{url}: corrupt or truncated shard, rest skipped after {n} samples ({exc})")
        return
    if expected is not None and n < expected:
        stats["skipped_corrupt"] += 1
        _emit(log, f"{url}: truncated shard: {n} of {expected} samples")


class _BytesRaster(RasterSource):
    """A :class:`RasterSource` over an encoded image in memory (values and validity exactly as
    the file on disk would read)."""

    def __init__(self, data: bytes, name: str) -> None:
        self.path = Path(name)
        self._mem = MemoryFile(data, ext=Path(name).suffix)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = self._mem.open()
        except BaseException:
            self._mem.close()
            raise
        self._init_from(ds, ds.count)

    def close(self) -> None:
        super().close()
        self._mem.close()


# -- helpers shared with TaskDataset's detection items -----------------------------------------


def unit_window(src: RasterSource, window: tuple[int, int, int, int], bands: Sequence[int],
                size: int) -> tuple[NDArray[np.float32], NDArray[np.bool_], bool]:
    """A window (may reach past the edges) on the 0..1 scale by data type, 0 where not valid,
    resized to ``size`` — as ``TaskDataset`` reads its windows.

    Returns:
        (C, size, size) pixels, (size, size) validity, and whether the type is an integer.
    """
    raw, valid = src.read(Window(*window), bands)
    c = raw.shape[0]
    x01 = normalise(raw, src.dtype, [0.0] * c, [1.0] * c)
    x01[:, ~valid] = 0.0
    return _resize(x01, size), _resize_nearest(valid, size), np.dtype(src.dtype).kind in "ui"


def train_window(bounds: tuple[int, int, int, int], boxes: NDArray[np.float64], tile: int,
                 cfg: AugmentConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``TaskDataset``'s training window: with probability ``cfg.object_crop`` placed around a box
    drawn at random, at a scale jittered within ``cfg.scale``."""
    around = None
    if len(boxes) and rng.random() < cfg.object_crop:
        around = tuple(boxes[int(rng.integers(len(boxes)))])
    return sample_window(bounds, tile, cfg.scale, rng, around)


def fit_window(width: int, height: int) -> tuple[int, int, int, int]:
    """The square window holding the whole image, centred (padding on the short side)."""
    side = max(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def detect_item(ex: Example, mean: NDArray[np.float32], std: NDArray[np.float32]) -> dict[str, Any]:
    """``TaskDataset``'s detect item: standardised image, (N, 4) float32 boxes, (N,) int64 labels."""
    boxes = ex.boxes if ex.boxes is not None else np.zeros((0, 4))
    labels = ex.labels if ex.labels is not None else np.zeros(0, dtype=np.int64)
    return {"image": torch.from_numpy((ex.image - mean) / std),
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64))}


def _shuffled(items: Iterable[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """A shuffle buffer of ``size`` samples (``size`` <= 1: in order)."""
    if size <= 1:
        yield from items
        return
    buf: list[RawSample] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    order = rng.permutation(len(buf))
    for i in order:
        yield buf[int(i)]


class ShardStream(IterableDataset[dict[str, Any]]):
    """Training items of ``detect`` streamed from WebDataset shards.

    Each item is what :class:`~dynamicvis_cli.data.dataset.TaskDataset` gives in training:
    ``{"image": float32 (C, S, S) normalised, "boxes": (N, 4) float32 xyxy px in the tile,
    "labels": (N,) int64}``, from the same window sampling (object-centred crops included),
    augmentation and normalisation. An item whose window keeps no box is **yielded with zero
    boxes** (not re-drawn), as ``TaskDataset`` does; the consumer drops such items.

    With ``augment=None`` nothing is random: each item is the whole image, centred in a square
    (the short side padded as scene edges are) and resized to ``tile_size``.

    Order: the shard list is permuted per epoch (seeded by ``seed`` and the epoch; kept in order
    when ``shuffle`` <= 1), split by ``rank`` (``[rank::world]``), then by DataLoader worker;
    samples pass a shuffle buffer of ``shuffle`` samples (memory: about ``shuffle`` encoded
    samples per reader). Augmentation draws from a generator seeded by ``seed``, the epoch and
    the sample's shard and key, so it does not depend on rank or worker count.

    Epoch of a pass: ``epoch_fn()`` when given; else the value of :meth:`set_epoch` plus the
    passes this copy has started (a DataLoader with ``persistent_workers=True`` advances it by
    itself; otherwise call ``set_epoch`` before each epoch).

    Bad input never stops a pass: a corrupt or truncated shard is logged and skipped from the
    point where it breaks; a sample with an absolute or ``..`` member name or a link is skipped;
    an undecodable sample is skipped; boxes are clipped to the image (dropped when no area is
    left); a box of a category not in ``classes`` is dropped (``strict=True``: DatasetError).
    ``stats`` counts these (keys :data:`STAT_KEYS`; ``skipped_corrupt`` counts broken shards and
    undecodable samples). Inside DataLoader workers each worker counts in its own copy — the
    main process's ``stats`` stay 0 — so every reader also logs a one-line summary at the end
    of each pass (through ``log``, else :mod:`logging`).

    Raises (at construction, never in a pass):
        DatasetError: no shards, a missing shard, no classes (none given and no dataset.json).
        DvisUsageError: ``bands``/``mean``/``std`` lengths differ, fewer shards than ranks, or a
            bad ``rank``/``world``.
    """

    def __init__(self, urls: str | Path | Sequence[str | Path], *, classes: Sequence[str] | None,
                 tile_size: int, bands: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 augment: AugmentConfig | None, seed: int = 0, shuffle: int = 1000, rank: int = 0,
                 world: int = 1, epoch_fn: Callable[[], int] | None = None, strict: bool = False,
                 log: Logger | None = None) -> None:
        super().__init__()
        self.urls = expand_urls(urls)
        self.expected, meta_classes = self._read_metas(self.urls)
        self.classes = list(classes) if classes else meta_classes
        if not self.classes:
            raise DatasetError(self.urls[0], "classes not given and no dataset.json beside the shards")
        if not (len(bands) == len(mean) == len(std)) or not bands:
            raise DvisUsageError(f"bands {list(bands)}, mean {list(mean)} and std {list(std)} must "
                                 "have the same (non-zero) length")
        if world < 1 or not 0 <= rank < world:
            raise DvisUsageError(f"rank {rank} outside 0..{world - 1}")
        if len(self.urls) < world:
            raise DvisUsageError(f"{len(self.urls)} shard(s) for {world} ranks: every rank needs one; "
                                 "write smaller shards (dvis data shard --samples-per-shard)")
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.tile = int(tile_size)
        self.bands = [int(b) for b in bands]
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.augment = augment
        self.seed = int(seed)
        self.shuffle = int(shuffle)
        self.rank, self.world = int(rank), int(world)
        self.epoch_fn = epoch_fn
        self.strict = strict
        self.log = log
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._epoch = 0
        self._passes = 0

    @staticmethod
    def _read_metas(urls: list[str]) -> tuple[dict[str, int], list[str] | None]:
        """Per-shard sample counts and the classes from the ``dataset.json`` beside the shards."""
        expected: dict[str, int] = {}
        classes: list[str] | None = None
        for folder in dict.fromkeys(str(Path(u).parent) for u in urls):
            meta = _read_meta(Path(folder))
            if meta is None:
                continue
            if classes is None and isinstance(meta.get("classes"), list):
                classes = [str(c) for c in meta["classes"]]
            counts = meta.get("shard_samples")
            if isinstance(counts, list) and len(counts) == len(meta["shards"]):
                for name, n in zip(meta["shards"], counts):
                    expected[os.path.abspath(Path(folder) / str(name))] = int(n)
        return expected, classes

    @property
    def num_samples(self) -> int | None:
        """Samples in all shards, when every shard's count is known from ``dataset.json``."""
        keys = [os.path.abspath(u) for u in self.urls]
        if all(k in self.expected for k in keys):
            return sum(self.expected[k] for k in keys)
        return None

    def samples_for(self, epoch: int, worker: int = 0, workers: int = 1) -> int | None:
        """How many samples :meth:`shards_for` holds (None when a shard's count is unknown): with
        several ranks, shards of unequal size give ranks unequal passes; size steps by the
        smallest rank, or iterate by steps."""
        keys = [os.path.abspath(u) for u in self.shards_for(epoch, worker, workers)]
        if not all(k in self.expected for k in keys):
            return None
        return sum(self.expected[k] for k in keys)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (the one after it ``epoch + 1``, ...)."""
        self._epoch, self._passes = int(epoch), 0

    def _next_epoch(self) -> int:
        if self.epoch_fn is not None:
            return int(self.epoch_fn())
        epoch = self._epoch + self._passes
        self._passes += 1
        return epoch

    def shards_for(self, epoch: int, worker: int = 0, workers: int = 1) -> list[str]:
        """The shards this rank's ``worker`` (of ``workers``) reads in ``epoch``, in order."""
        order = list(self.urls)
        if self.shuffle > 1:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(order))
            order = [order[int(i)] for i in perm]
        return order[self.rank :: self.world][worker::workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self._next_epoch()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards_for(epoch, worker, workers)
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker, 1])
        before = dict(self.stats)
        done = False
        try:
            raws = (raw for url in shards
                    for raw in read_shard(url, self.stats, expected=self.expected.get(os.path.abspath(url)),
                                          log=self.log))
            for raw in _shuffled(raws, self.shuffle, rng):
                item = self._item(raw, epoch)
                if item is not None:
                    self.stats["samples"] += 1
                    yield item
            done = True
        finally:
            delta = {k: self.stats[k] - before[k] for k in STAT_KEYS}
            where = f"rank {self.rank}/{self.world}, worker {worker}/{workers}"
            _emit(self.log, f"shard stream epoch {epoch} ({where}, {len(shards)} shards)"
                  f"{'' if done else ' stopped early'}: "
                  + ", ".join(f"{k} {v}" for k, v in delta.items()), level=logging.INFO)

    # -- one sample --------------------------------------------------------------------------

    def _corrupt(self, raw: RawSample, problem: str) -> None:
        self.stats["skipped_corrupt"] += 1
        _emit(self.log, f"{raw.shard}: sample '{raw.key}' skipped: {problem}")

    def _targets(self, raw: RawSample, meta: dict[str, Any], width: int,
                 height: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """The sample's boxes clipped to the image and its class indexes (counting what is lost).

        Raises:
            DatasetError: ``strict`` and a category outside ``classes``.
            ValueError: boxes and categories malformed (the sample is corrupt).
        """
        boxes = np.asarray(meta.get("boxes", []), dtype=np.float64).reshape(-1, 4)
        cats = meta.get("categories", [])
        if not isinstance(cats, list) or len(cats) != len(boxes):
            raise ValueError("'categories' does not match 'boxes'")
        known = np.array([c in self.index for c in cats], dtype=bool)
        if not known.all():
            bad = next(c for c in cats if c not in self.index)
            if self.strict:
                raise DatasetError(raw.shard, f"sample '{raw.key}': category '{bad}' is not in the "
                                   f"class list {self.classes}")
            self.stats["unknown_categories"] += int((~known).sum())
        labels = np.array([self.index.get(c, -1) for c in cats], dtype=np.int64)
        boxes, labels = boxes[known], labels[known]
        finite = np.isfinite(boxes).all(axis=1)
        clipped = np.clip(boxes, 0, [width, height, width, height])
        changed = finite & (clipped != boxes).any(axis=1)
        ok = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        self.stats["boxes_clipped"] += int((changed & ok).sum())
        self.stats["boxes_dropped"] += int((~ok).sum())
        return clipped[ok], labels[ok]

    def _item(self, raw: RawSample, epoch: int) -> dict[str, Any] | None:
        ext = next((e for e in IMAGE_EXTS if e in raw.files), None)
        if ext is None or "json" not in raw.files:
            self._corrupt(raw, "no image or no .json")
            return None
        try:
            meta = json.loads(raw.files["json"])
            if not isinstance(meta, dict):
                raise ValueError("the .json is not an object")
            with _BytesRaster(raw.files[ext], f"{raw.shard}:{raw.key}.{ext}") as src:
                boxes, labels = self._targets(raw, meta, src.width, src.height)
                return self._window_item(raw, src, boxes, labels, epoch)
        except DatasetError:
            raise
        except (DvisError, RasterioError, ValueError, TypeError) as exc:
            self._corrupt(raw, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None

    def _window_item(self, raw: RawSample, src: RasterSource, boxes: NDArray[np.float64],
                     labels: NDArray[np.int64], epoch: int) -> dict[str, Any]:
        bounds = (0, 0, src.width, src.height)
        cfg = self.augment
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(f"{os.path.basename(raw.shard)}/{raw.key}"
                                                                  .encode("utf-8"))])
        window = train_window(bounds, boxes, self.tile, cfg, rng) if cfg is not None else \
            fit_window(src.width, src.height)
        image, valid, integer = unit_window(src, window, self.bands, self.tile)
        ex = Example(image=image, valid=valid)
        min_visible = cfg.min_visible if cfg is not None else 0.5
        ex.boxes, ex.labels, _ = window_boxes(boxes, labels, window, self.tile, min_visible)
        if cfg is not None:
            ex = augment(ex, cfg, rng, clip=integer)
        return detect_item(ex, self.mean, self.std)
