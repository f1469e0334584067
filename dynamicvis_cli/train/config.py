"""The fine-tuning config: a dataclass ↔ YAML, with flag overrides and per-task defaults.

Precedence: built-in defaults < task defaults (the authors' recipes, DESIGN.md §2.2) < the YAML
file < command-line flags and ``--set key=value`` (dotted keys reach ``augment.*``). A value
left at None means "the task's or the model's own value", resolved by :func:`resolve`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dynamicvis_cli.data.augment import AugmentConfig
from dynamicvis_cli.errors import DvisUsageError

DEFAULT_EPOCHS = 50
TASKS = ("classify", "segment", "change", "detect", "instance", "region")
PRECISIONS = ("fp32", "bf16", "fp16")
SYNC_BN = ("auto", "on", "off")

#: The authors' learning rates and frozen stages per task (DESIGN.md §2.2).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {"lr": 2e-4, "freeze_stages": 1},
    "detect": {"lr": 2e-4, "freeze_stages": 0},
    "instance": {"lr": 1e-4, "freeze_stages": 1},
    "segment": {"lr": 1e-3, "freeze_stages": 0},
    "change": {"lr": 5e-4, "freeze_stages": 0},
    "region": {"lr": 4e-4, "freeze_stages": 0},  # the pretraining recipe (§2.2: "as pretraining")
}


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs; ``dvis finetune --print-config`` shows it resolved.

    Attributes (the less obvious ones):
        data, val_data: dataset paths (folder, COCO .json or geo .yaml); val is optional.
        format: dataset format or ``auto``.
        palette: colour table for colour masks (file or mapping ``class: "#RRGGBB"``).
        model: architecture name, released model or checkpoint to start from.
        bands: 1-based bands to read (default: the bands the starting checkpoint was trained on,
            when it records them, else the first bands the model takes).
        mean, std: normalisation on the 0..1 scale (default: the model's).
        tile_size: training crop side (default: the model's tile size).
        steps: optimiser steps (wins over ``epochs``).
        batch_size: global batch per optimiser step, over all processes and accumulation steps.
        accum: gradient-accumulation micro-steps per optimiser step.
        warmup_steps: linear warm-up (default 5 % of the steps).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        freeze_stages: backbone stages (from the first) kept frozen.
        gumbel_schedule: router noise: ``decay`` (fed with training progress), ``fixed`` or ``off``.
        token_drop: experimental: fraction of feature tokens dropped before the heads in training.
        aux_weight: weight of segmentation's auxiliary FCN head loss.
        dice_weight: weight of the Dice term of the change loss (CE + 3 x Dice).
        repeat: training items per image per epoch (random windows of large images).
        save_every: checkpoint every N optimiser steps (and always at the end).
        eval_every: validate every N steps (and at the end, when val_data is given).
        resume: continue from the newest checkpoint in ``out`` (or from this checkpoint folder).
        sync_bn: BatchNorm layers (UperNet, the change decoder) under DDP: ``auto`` converts them
            to SyncBatchNorm (statistics over the global batch) on CUDA with several processes,
            ``on`` requires that (a usage error on CPU: torch's SyncBatchNorm needs CUDA),
            ``off`` keeps per-process statistics.
    """

    task: str = "classify"
    data: str | None = None
    val_data: str | None = None
    format: str = "auto"
    classes: list[str] | None = None
    palette: Any = None
    image_root: str | None = None
    model: str = "base"
    out: str | None = None
    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    tile_size: int | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 8
    accum: int = 1
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    grad_clip: float | None = None
    precision: str = "fp32"
    freeze_stages: int | None = None
    gumbel_schedule: str = "decay"
    token_drop: float = 0.0
    aux_weight: float = 0.4
    dice_weight: float = 3.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    repeat: int = 1
    seed: int = 0
    save_every: int | None = None
    keep_checkpoints: int = 2
    eval_every: int | None = None
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    scan_backend: str = "auto"
    resume: Any = False
    overwrite: bool = False
    check_masks: bool = True
    deterministic: bool = False
    sync_bn: str = "auto"
    geo: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"]["scale"] = list(self.augment.scale)
        return d

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))


def _field_names(cls: Any) -> set[str]:
    return {f.name for f in fields(cls)}


def from_mapping(data: Mapping[str, Any], *, base: TrainConfig | None = None,
                 source: object = "config") -> TrainConfig:
    """``base`` (default: built-ins) updated with ``data``; unknown keys are errors."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    cfg.augment = dataclasses.replace(cfg.augment)
    known = _field_names(type(cfg))
    for key, value in data.items():
        if key not in known:
            raise DvisUsageError(f"{source}: unknown config key '{key}' (see dvis finetune --print-config)")
        if key == "augment":
            if value is None:
                continue
            if value in (False, "none", "off"):
                cfg.augment = AugmentConfig.none()
                continue
            if not isinstance(value, Mapping):
                raise DvisUsageError(f"{source}: augment must be a mapping or 'none'")
            for k, v in value.items():
                if k not in _field_names(AugmentConfig):
                    raise DvisUsageError(f"{source}: unknown augment key '{k}' "
                                         f"({', '.join(sorted(_field_names(AugmentConfig)))})")
                setattr(cfg.augment, k, tuple(float(x) for x in v) if k == "scale" else v)
            continue
        setattr(cfg, key, value)
    return cfg


def load_yaml(path: str | Path, *, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML config file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DvisUsageError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DvisUsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, Mapping):
        raise DvisUsageError(f"{path}: a config file holds a mapping of keys to values")
    return from_mapping(data, base=base, source=path)


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "augment.scale=[0.5, 2]"]`` → a nested mapping (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise DvisUsageError(f"--set '{item}': expected KEY=VALUE")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text.strip() else None
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def command_line_config(
    base: TrainConfig,
    flags: Mapping[str, Any],
    *,
    no_augment: bool = False,
    resume: bool | str = False,
    overwrite: bool = False,
    sets: Sequence[str] | None = None,
) -> TrainConfig:
    """A config file's ``base`` overridden the way the training commands' flags do it: flags that
    were given (not None), then ``--no-augment``, ``--resume`` (True or a checkpoint folder),
    ``--overwrite`` and ``--set KEY=VALUE`` last. ``--steps`` without ``--epochs`` drops the
    file's epochs, so steps win."""
    cfg = from_mapping({k: v for k, v in flags.items() if v is not None}, base=base, source="command line")
    if no_augment:
        cfg = from_mapping({"augment": "none"}, base=cfg)
    if resume:
        cfg.resume = resume
    if overwrite:
        cfg.overwrite = True
    if sets:
        cfg = from_mapping(parse_sets(sets), base=cfg, source="--set")
    if flags.get("steps") is not None and flags.get("epochs") is None:
        cfg.epochs = None
    return cfg


def resolve(cfg: TrainConfig, *, model_tile: int, model_mean: Sequence[float], model_std: Sequence[float],
            in_chans: int, require_io: bool = True, model_bands: Sequence[int] | None = None) -> TrainConfig:
    """Fill the None values from the task's and the model's defaults and validate everything.

    ``model_bands``: the band indexes the starting checkpoint was trained on (its config's
    ``band_indexes``), the default of ``bands`` when they are as many as ``in_chans``."""
    cfg = dataclasses.replace(cfg)
    # YAML reads a bare on/off as a boolean
    sync_bn: Any = cfg.sync_bn
    if isinstance(sync_bn, bool):
        cfg.sync_bn = "on" if sync_bn else "off"
    if cfg.task not in TASKS:
        raise DvisUsageError(f"unknown task '{cfg.task}'; choose one of {', '.join(TASKS)}")
    defaults = TASK_DEFAULTS[cfg.task]
    if cfg.lr is None:
        cfg.lr = defaults["lr"]
    if cfg.freeze_stages is None:
        cfg.freeze_stages = defaults["freeze_stages"]
    if cfg.tile_size is None:
        cfg.tile_size = model_tile
    if cfg.steps is None and cfg.epochs is None:
        cfg.epochs = DEFAULT_EPOCHS
    if cfg.bands is None:
        if model_bands and len(model_bands) == in_chans:
            cfg.bands = [int(b) for b in model_bands]
        else:
            cfg.bands = list(range(1, in_chans + 1))
    n = len(cfg.bands)
    if cfg.mean is None:
        cfg.mean = list(model_mean) if len(model_mean) == n else (list(model_mean) * n)[:n]
    if cfg.std is None:
        cfg.std = list(model_std) if len(model_std) == n else (list(model_std) * n)[:n]
    validate(cfg, require_io=require_io)
    return cfg


def validate(cfg: TrainConfig, *, require_io: bool = True) -> None:
    """Raise :class:`DvisUsageError` for values that cannot work (before any data is read);
    ``require_io=False`` skips the checks of ``data`` and ``out`` (for ``--print-config``)."""
    def bad(msg: str) -> None:
        raise DvisUsageError(msg)

    if cfg.task not in TASKS:
        bad(f"unknown task '{cfg.task}'; choose one of {', '.join(TASKS)}")
    if require_io and not cfg.data:
        bad("no training data: give --data (or data: in the config)")
    if require_io and not cfg.out:
        bad("no output folder: give -o/--out (or out: in the config)")
    if cfg.precision not in PRECISIONS:
        bad(f"precision '{cfg.precision}': choose one of {', '.join(PRECISIONS)}")
    if cfg.sync_bn not in SYNC_BN:
        bad(f"sync_bn '{cfg.sync_bn}': choose one of {', '.join(SYNC_BN)}")
    if cfg.gumbel_schedule not in ("fixed", "decay", "off"):
        bad(f"gumbel_schedule '{cfg.gumbel_schedule}': choose fixed, decay or off")
    if cfg.batch_size < 1 or cfg.accum < 1:
        bad("batch_size and accum must be at least 1")
    if cfg.steps is not None and cfg.steps < 1:
        bad("steps must be at least 1")
    if cfg.epochs is not None and cfg.epochs < 1:
        bad("epochs must be at least 1")
    if not 0.0 <= cfg.token_drop < 1.0:
        bad(f"token_drop {cfg.token_drop}: a fraction in [0, 1)")
    if cfg.tile_size is not None and cfg.tile_size < 32:
        bad(f"tile_size {cfg.tile_size}: at least 32 px")
    if cfg.freeze_stages is not None and not 0 <= cfg.freeze_stages <= 4:
        bad(f"freeze_stages {cfg.freeze_stages}: 0..4")
    lo, hi = cfg.augment.scale
    if not 0 < lo <= hi:
        bad(f"augment.scale {list(cfg.augment.scale)}: 0 < min <= max")
    if cfg.bands is not None and (not cfg.bands or min(cfg.bands) < 1):
        bad("bands are 1-based band numbers")
    if cfg.mean is not None and cfg.bands is not None and len(cfg.mean) != len(cfg.bands):
        bad(f"mean has {len(cfg.mean)} values for {len(cfg.bands)} band(s)")
    if cfg.std is not None and cfg.bands is not None and len(cfg.std) != len(cfg.bands):
        bad(f"std has {len(cfg.std)} values for {len(cfg.bands)} band(s)")
