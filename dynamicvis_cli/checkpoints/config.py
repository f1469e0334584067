"""ModelConfig: the config.json stored beside every dvis checkpoint's weights.

A dvis checkpoint is either a directory holding ``config.json`` and ``model.safetensors``, or a
single ``.safetensors`` file whose metadata carries the same JSON under the key ``dvis_config``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dynamicvis_cli.errors import CheckpointError
from dynamicvis_cli.nn.backbone import BackboneSpec

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_KEY = "dvis_config"

# ImageNet statistics on a 0..1 scale: what the authors' configs normalise RGB with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and feed it correctly.

    Attributes:
        arch: architecture name (``base``, ``large``, ``small``, ``tiny`` or ``custom``).
        backbone: the backbone's architecture.
        fpn_channels: FPN width, or None for a backbone without FPN.
        task: ``backbone`` for feature extractors; later ``classify``, ``detect``, ...
        classes: class names of a task head, in output order.
        bands: names of the input bands the weights expect, in order (informational).
        band_indexes: the 1-based raster bands the weights were trained on (``dvis finetune
            --bands 3,2,1`` records ``[3, 2, 1]``), one per input channel: what inference, evaluation
            and indexing read when no ``--bands`` is given (:meth:`default_bands`). None (configs
            written before it existed, imported and released models): the raster's first bands.
        mean, std: per-band normalisation applied to pixel values scaled to 0..1.
        tile_size: the tile side inference uses by default.
        token_budget: cap on tokens selected per unit, or None.
        dense: disable routing (the paper's dense variant).
        gumbel_schedule: router noise in training: ``fixed`` (0.1), ``decay`` or ``off``.
        head: keyword arguments of the task head (e.g. ``{"channels": 256}``).
        provenance: where the weights came from (source file, its sha256, converter, licence).
    """

    arch: str
    backbone: BackboneSpec
    fpn_channels: int | None = 256
    task: str = "backbone"
    classes: list[str] = field(default_factory=list)
    bands: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    band_indexes: list[int] | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    tile_size: int = 512
    token_budget: int | None = None
    dense: bool = False
    gumbel_schedule: str = "fixed"
    head: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backbone"] = self.backbone.to_dict()
        if d["band_indexes"] is None:
            del d["band_indexes"]  # configs without recorded bands stay as they were written
        return d

    def default_bands(self) -> list[int]:
        """The 1-based bands to read when the user gives no ``--bands``: the recorded
        :attr:`band_indexes`, else the first ``in_chans`` bands."""
        if self.band_indexes is not None and len(self.band_indexes) == self.backbone.in_chans:
            return [int(b) for b in self.band_indexes]
        return list(range(1, self.backbone.in_chans + 1))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: object = "config") -> ModelConfig:
        d = dict(d)
        version = d.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                source, f"config format {version} is newer than this dvis understands "
                f"({FORMAT_VERSION}); upgrade dynamicvis-cli"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(source, f"unknown config fields: {', '.join(sorted(unknown))}")
        try:
            d["backbone"] = BackboneSpec.from_dict(d["backbone"])
            config = cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(source, f"invalid model config: {exc}") from exc
        indexes = config.band_indexes
        if indexes is not None:
            if (not isinstance(indexes, list) or not indexes
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in indexes)):
                raise CheckpointError(source, f"invalid model config: band_indexes {indexes!r} must be a list "
                                              "of 1-based band numbers")
            if len(indexes) != config.backbone.in_chans:
                raise CheckpointError(source, f"invalid model config: band_indexes {indexes} name "
                                              f"{len(indexes)} band(s) but the model takes "
                                              f"{config.backbone.in_chans}")
        return config

    @classmethod
    def from_json(cls, text: str, *, source: object = "config") -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(source, f"config is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CheckpointError(source, "config must be a JSON object")
        return cls.from_dict(data, source=source)

    def with_bands(self, n: int) -> ModelConfig:
        """A copy for ``n`` input bands: backbone in_chans, and per-band mean/std/names repeated
        cyclically when their count changes; the original count is kept in the provenance. The
        recorded :attr:`band_indexes` no longer apply to another band count and are dropped."""
        import dataclasses

        new = dataclasses.replace(self)
        source = self.backbone.in_chans
        if n == source:
            return new
        new.backbone = dataclasses.replace(self.backbone, in_chans=n)
        new.band_indexes = None
        new.provenance = {**self.provenance, "input_adapted_from_bands": source}
        if len(self.mean) != n:
            new.mean = (list(self.mean) * n)[:n]
            new.std = (list(self.std) * n)[:n]
            new.bands = [f"band{i + 1}" for i in range(n)]
        return new

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        return cls.from_json(path.read_text(encoding="utf-8"), source=path)
