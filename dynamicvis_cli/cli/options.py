"""Options shared by the commands: one flag, one meaning, everywhere.

A value left at None means "the model's own value" (its tile size, its bands), as timm's
create_model drops None kwargs: a flag the user did not set never overrides the model.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Tta(str, Enum):
    none = "none"
    flips = "flips"
    d4 = "d4"


class Blend(str, Enum):
    linear = "linear"
    cosine = "cosine"
    centre = "centre"


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name (dvis models list) or checkpoint path.")]

#: ``--model`` of a command with a released default: None runs that command's released model where
#: installed, else ``base`` (dynamicvis_cli.checkpoints.registry.default_model).
DefaultModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model name (dvis models list) or checkpoint path [default: this command's "
                          "released model where installed (dvis models list marks it), else base].")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="Autocast precision.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Tiles per forward pass.")]
TileOpt = Annotated[int | None, typer.Option("--tile-size", min=32, help="Tile side in pixels (default: the model's).")]
OverlapOpt = Annotated[int | None, typer.Option("--overlap", min=0, help="Overlap between tiles in pixels (default: tile/8).")]
BandsOpt = Annotated[str | None, typer.Option("--bands", help="1-based band indices, e.g. 4,3,2 (default: those the checkpoint was trained on, else the first bands).")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="Reader processes (0: read in the main process).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output file (one input); - for stdout where the command writes vectors.")]
OutDirOpt = Annotated[Path | None, typer.Option("--out-dir", help="Output folder (many inputs).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
SkipExistingOpt = Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists.")]
ShardOpt = Annotated[str | None, typer.Option("--shard", help="Process the k-th of N shares of the inputs, e.g. 2/8.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")]
RandomOpt = Annotated[bool, typer.Option("--random-weights", help="Allow randomly initialised weights (testing only; reported in the summary).")]
ClassesOpt = Annotated[str | None, typer.Option("--classes", help="Comma-separated class names (for a model without a head of its own).")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="Score threshold.")]
StretchOpt = Annotated[bool, typer.Option("--stretch", help="Scale each band by its 2nd-98th percentiles (16-bit sensors) instead of by data type.")]
QuicklookOpt = Annotated[Path | None, typer.Option("--quicklook", help="Also render the result over the image to this .png (one input).")]
MaxMemoryOpt = Annotated[str | None, typer.Option("--max-memory", help="Host memory budget, e.g. 4G: the batch size, reader workers and GDAL cache are fitted to it.")]
DevicesOpt = Annotated[str | None, typer.Option(
    "--devices", help="One process per device, e.g. cuda:0,cuda:1 or cpu,cpu (started through "
                      "torch.distributed); under torchrun, each rank's device.")]
TtaOpt = Annotated[Tta, typer.Option(
    "--tta", help="Test-time augmentation: flips (3 passes) or d4 (8 flips and rotations), averaged "
                  "per tile.")]
BlendOpt = Annotated[Blend | None, typer.Option(
    "--blend", help="Tile weights across overlaps: linear or cosine ramps, or centre (each tile keeps its "
                    "centre). Default cosine.")]
ManifestOpt = Annotated[Path | None, typer.Option(
    "--manifest", help="Append a line per finished input (outputs' sha256, model, settings) to this .jsonl.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="With --manifest: skip the inputs it records as done, redo the rest.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Use a --manifest written with another model or other settings (its inputs are redone).")]
PixelOpt = Annotated[bool, typer.Option("--pixel-coords", help="Allow a raster without CRS: write pixel coordinates.")]


def parse_bands(text: str | None) -> list[int] | None:
    """'4,3,2' → [4, 3, 2]; None stays None. Validation against the raster happens on opening."""
    if text is None:
        return None
    try:
        bands = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a comma-separated list of band numbers", param_hint="--bands") from None
    if not bands or min(bands) < 1:
        raise typer.BadParameter("band numbers start at 1", param_hint="--bands")
    return bands


def parse_classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"duplicate class names in '{text}'", param_hint="--classes")
    return names


def parse_memory(text: str | None) -> int | None:
    """'4G' → bytes; None stays None (no budget)."""
    if text is None:
        return None
    from dynamicvis_cli.infer.memory import parse_size

    return parse_size(text)


def blend_mode(blend: Blend | None, stitch: str | None) -> str:
    """``--blend`` or its older spelling ``--stitch`` (blend = cosine, crop = centre) → a mode.

    Raises:
        typer.BadParameter: an unknown ``--stitch`` value, or the two flags disagree.
    """
    if stitch is not None and stitch not in ("blend", "crop", *(b.value for b in Blend)):
        raise typer.BadParameter(f"'{stitch}': expected blend or crop (or a --blend value)",
                                 param_hint="--stitch")
    if blend is None:
        return stitch or Blend.cosine.value
    aliases = {"blend": "cosine", "crop": "centre"}
    if stitch is not None and aliases.get(stitch, stitch) != blend.value:
        raise typer.BadParameter(f"--stitch {stitch} contradicts --blend {blend.value}; give one of them",
                                 param_hint="--blend")
    return blend.value


def check_resume(manifest: Path | None, resume: bool) -> None:
    """``--resume`` needs ``--manifest``: a usage error (exit 2) before anything loads."""
    if resume and manifest is None:
        raise typer.BadParameter("--resume needs --manifest FILE (the manifest of the run to resume)",
                                 param_hint="--resume")
