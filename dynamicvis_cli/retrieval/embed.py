"""Images and chips → float embeddings: the mean of the backbone's last stage.

The DynamicVis paper's zero-shot retrieval embeds an image as the spatial mean of the last
stage's feature map (768 dimensions for DynamicVis-B). This is the *raw* mean: the classification
head's ``pooled`` adds a LayerNorm on top (the authors' ``post_meanpool_norm``), which belongs to
the classifier, not to the embedding, so it is not used here.

A model with random weights is built under a fixed seed (recorded in the archive), so that the
same archive can be queried from another process with the same model: with random weights the
embeddings mean nothing, but they are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from rasterio.windows import Window
from torch import nn

from dynamicvis_cli.checkpoints.config import ModelConfig
from dynamicvis_cli.checkpoints.registry import resolve
from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.geo.read import RasterSource, normalise, percentile_stretch
from dynamicvis_cli.infer.runner import (
    ReaderSpec,
    RunStats,
    TileDataset,
    autocast,
    iterate_batches,
    resolve_device,
    stack,
)

ProgressFn = Callable[[int, int], None]

#: Long side above which an image is a scene to be chipped, not a chip to embed whole.
MAX_IMAGE_SIDE = 4096


@dataclass
class Embedder:
    """A backbone ready to embed normalised images.

    Attributes:
        backbone: the DynamicVis backbone (returns four stage maps).
        config: the effective model config (bands, mean, std).
        name: the model name or checkpoint path as given.
        weights: where each part's weights came from (``checkpoint`` or ``random``).
        device, precision: where and how it runs.
        seed: the seed the model was built under (matters for random weights only).
    """

    backbone: nn.Module
    config: ModelConfig
    name: str
    weights: dict[str, str]
    device: torch.device
    precision: str = "fp32"
    seed: int = 0
    dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.dim = int(self.config.backbone.dims[-1])

    @property
    def random(self) -> bool:
        """Some weights are random (results are a floor, not a result)."""
        return "random" in self.weights.values()

    @property
    def in_chans(self) -> int:
        return int(self.config.backbone.in_chans)

    def embed(self, x: torch.Tensor) -> NDArray[np.float32]:
        """(B, C, H, W) normalised images → (B, dim) float32: the mean of the last stage."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            last = self.backbone(x.to(self.device))[-1]
        out: NDArray[np.float32] = last.float().mean(dim=(-2, -1)).cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        """What the archive records about the model, to embed queries the same way later."""
        return {
            "name": self.name, "arch": self.config.arch, "weights": dict(self.weights),
            "random_weights": self.random, "seed": self.seed, "in_chans": self.in_chans,
            "dim": self.dim, "mean": list(self.config.mean), "std": list(self.config.std),
            "embedding": "mean of the last backbone stage",
        }


def load_embedder(
    model: str,
    *,
    in_chans: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    random_weights: bool = False,
    seed: int = 0,
) -> Embedder:
    """Load the backbone of ``model`` (a name, backbone checkpoint or task checkpoint).

    Args:
        model: registered name or checkpoint path.
        in_chans: input bands (the RGB stem is adapted when it differs); None: the model's.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        random_weights: allow random weights (an architecture name without checkpoint).
        seed: torch seed for building the model; the global random state is left untouched.

    Raises:
        DvisUsageError: random weights without ``random_weights``, a bad device.
    """
    from dynamicvis_cli.checkpoints.load import load_model
    from dynamicvis_cli.checkpoints.task import load_task_model
    from dynamicvis_cli.nn.tasks import TASKS

    dev = resolve_device(device)
    config, location = resolve(model)
    trunk: Any
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.task in TASKS:
            loaded = load_task_model(model, config.task, in_chans=in_chans, device=dev,
                                     random_weights=random_weights)
            trunk = loaded.module.trunk
            cfg, weights = loaded.config, {"trunk": loaded.weights["trunk"]}
        else:
            trunk = load_model(model, device=dev, in_chans=in_chans, with_fpn=False,
                               random_weights=random_weights)
            cfg = trunk.config
            weights = {"trunk": "checkpoint" if location is not None else "random"}
    return Embedder(trunk.backbone.eval(), cfg, str(model), weights, dev, precision, seed)


# -- chips of one raster ------------------------------------------------------------------------


@dataclass
class WindowEmbeddings:
    """Embeddings of the windows of one raster that were kept.

    Attributes:
        indices: positions (in the given window list) of the embedded windows.
        embeddings: (len(indices), dim) float32.
        valid_fraction: (len(indices),) share of valid pixels of each embedded window.
        skipped_nodata: windows skipped for too few valid pixels.
    """

    indices: list[int]
    embeddings: NDArray[np.float32]
    valid_fraction: NDArray[np.float32]
    skipped_nodata: int


def reader_spec(embedder: Embedder, path: Path, bands: Sequence[int], *, stretch: bool) -> ReaderSpec:
    """How to read ``path`` for ``embedder`` (bands, normalisation, optional percentile stretch)."""
    stretch_values = None
    if stretch:
        with RasterSource(path) as src:
            stretch_values = percentile_stretch(src, bands)
    return ReaderSpec(Path(path), list(bands), list(embedder.config.mean), list(embedder.config.std),
                      stretch_values)


def embed_windows(
    embedder: Embedder,
    spec: ReaderSpec,
    windows: Sequence[Window],
    *,
    batch_size: int = 16,
    workers: int = 0,
    min_valid: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> WindowEmbeddings:
    """Embed windows of one raster; windows with a valid share below ``min_valid`` (or no valid
    pixel at all) are skipped.

    Args:
        embedder: the model.
        spec: the raster and how to read it.
        windows: pixel windows, all of one size (so they batch).
        batch_size: windows per forward pass.
        workers: reader processes (0: read here).
        min_valid: minimum share (0..1) of valid pixels for a window to be embedded.
        progress: called with the number of windows read so far.
    """
    if batch_size < 1:
        raise DvisUsageError(f"--batch-size {batch_size}: must be at least 1")
    dataset = TileDataset([spec], windows)
    stats = RunStats()
    indices: list[int] = []
    parts: list[NDArray[np.float32]] = []
    fractions: list[float] = []
    skipped = 0
    for batch in iterate_batches(dataset, batch_size=batch_size, workers=workers, stats=stats):
        keep = []
        for tile in batch:
            frac = float(tile.valid.float().mean())
            if frac > 0 and frac >= min_valid:
                keep.append(tile)
                fractions.append(frac)
            else:
                skipped += 1
        if keep:
            parts.append(embedder.embed(stack(keep, 0, embedder.device)))
            indices.extend(t.index for t in keep)
        if progress is not None:
            progress(stats.tiles)
    if progress is not None:
        progress(len(windows))
    emb = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)
    return WindowEmbeddings(indices, emb, np.asarray(fractions, dtype=np.float32),
                            skipped + stats.skipped_invalid)


# -- whole images (chips, queries, evaluation sets) ---------------------------------------------


def read_image(embedder: Embedder, path: Path, bands: Sequence[int] | None, *,
               window: Window | None = None, stretch: bool = False) -> tuple[torch.Tensor, float]:
    """One image (or a window of it), normalised for ``embedder``: ((C, H, W), valid share).

    Raises:
        DvisUsageError: wrong band count, a scene too large to embed whole.
    """
    with RasterSource(path) as src:
        chosen = (src.check_bands(bands) if bands
                  else src.resolve_bands(None, embedder.in_chans, default=embedder.config.band_indexes))
        if len(chosen) != embedder.in_chans:
            raise DvisUsageError(
                f"{path}: {len(chosen)} band(s) selected but the model takes {embedder.in_chans}"
            )
        if window is None:
            if max(src.width, src.height) > MAX_IMAGE_SIDE:
                raise DvisUsageError(
                    f"{path}: {src.width}x{src.height} px is a scene, not a chip; give a window "
                    "(PATH@COL,ROW,WIDTH,HEIGHT)")
            window = Window(0, 0, src.width, src.height)
        data, valid = src.read(window, chosen)
        norm = normalise(data, src.dtype, embedder.config.mean, embedder.config.std,
                         stretch=percentile_stretch(src, chosen) if stretch else None)
    norm = np.where(valid[None], norm, 0.0).astype(np.float32)
    return torch.from_numpy(norm), float(valid.mean())


def _same_size_runs(items: Sequence[torch.Tensor], batch_size: int) -> Iterator[list[int]]:
    run: list[int] = []
    for i, x in enumerate(items):
        if run and (len(run) == batch_size or items[run[0]].shape != x.shape):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def embed_images(
    embedder: Embedder,
    paths: Sequence[Path],
    *,
    bands: Sequence[int] | None = None,
    batch_size: int = 16,
    stretch: bool = False,
    progress: ProgressFn | None = None,
) -> NDArray[np.float32]:
    """Embed whole images, each at its own size: (len(paths), dim) float32.

    Consecutive images of one size are batched; images are read in groups of ``batch_size``, so
    memory stays bounded for any number of images.
    """
    out = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    for start in range(0, len(paths), batch_size):
        group = list(range(start, min(start + batch_size, len(paths))))
        images = [read_image(embedder, paths[i], bands, stretch=stretch)[0] for i in group]
        for run in _same_size_runs(images, batch_size):
            out[[group[i] for i in run]] = embedder.embed(torch.stack([images[i] for i in run]))
        if progress is not None:
            progress(group[-1] + 1, len(paths))
    return out


def embed_chip_images(
    embedder: Embedder,
    items: Sequence[tuple[Path, Sequence[int], Window]],
    *,
    min_valid: float = 0.0,
    batch_size: int = 16,
    stretch: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[NDArray[np.float32] | None, float]]:
    """Embed one window from each of many small images (chip collections), batching across files.

    Running each file alone would cost one forward pass per chip; consecutive chips of one size
    share a batch instead.

    Args:
        items: (path, bands, window) per chip.
        min_valid: chips with a smaller share of valid pixels (or none) are not embedded.

    Returns:
        Per item: (embedding (dim,) or None when skipped, valid share).
    """
    out: list[tuple[NDArray[np.float32] | None, float]] = [(None, 0.0)] * len(items)
    for start in range(0, len(items), batch_size):
        group = list(range(start, min(start + batch_size, len(items))))
        read = [read_image(embedder, items[i][0], items[i][1], window=items[i][2], stretch=stretch)
                for i in group]
        keep = [j for j, (_, frac) in enumerate(read) if frac > 0 and frac >= min_valid]
        for j, (_, frac) in enumerate(read):
            out[group[j]] = (None, frac)
        images = [read[j][0] for j in keep]
        for run in _same_size_runs(images, batch_size):
            emb = embedder.embed(torch.stack([images[r] for r in run]))
            for r, e in zip(run, emb):
                j = keep[r]
                out[group[j]] = (e, read[j][1])
        if progress is not None:
            progress(group[-1] + 1)
    return out
