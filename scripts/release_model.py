"""Turn a ``dvis finetune`` run folder into a released model folder: fp16 weights + config.

    python scripts/release_model.py RUN_DIR models/ARCH.TAG

Writes ``models/ARCH.TAG/model.safetensors`` (floating tensors as float16; dvis loads them back
as float32) and ``config.json`` (the run's, with ``provenance.released`` added). The model card
(``MODEL_CARD.md``) is written by hand beside them and left as it is. Each file is written beside
its final name and moved into place, so an interrupted run leaves the previous release whole.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def release(run: Path, dest: Path) -> dict[str, object]:
    """Write the fp16 weights and config of ``run`` into ``dest``; raise ValueError on a bad run."""
    weights, config_path = run / "model.safetensors", run / "config.json"
    for needed in (weights, config_path):
        if not needed.is_file():
            raise ValueError(f"{run}: not a dvis run folder (no {needed.name})")
    try:
        state = load_file(str(weights))
        config = json.loads(config_path.read_text())
    except (SafetensorError, json.JSONDecodeError) as exc:
        raise ValueError(f"{run}: unreadable run folder ({exc})") from None
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    config.setdefault("provenance", {})["released"] = f"{dest.name} (fp16 weights of {run.name})"
    dest.mkdir(parents=True, exist_ok=True)
    parts = {dest / "model.safetensors": dest / ".model.safetensors.part",
             dest / "config.json": dest / ".config.json.part"}
    try:
        save_file(half, str(parts[dest / "model.safetensors"]), metadata={"format": "pt"})
        parts[dest / "config.json"].write_text(json.dumps(config, indent=2) + "\n")
        for final, part in parts.items():
            os.replace(part, final)
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    size = (dest / "model.safetensors").stat().st_size
    return {"out": str(dest), "tensors": len(half), "bytes": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a dvis finetune run folder")
    ap.add_argument("dest", type=Path, help="the model folder to write, e.g. models/tiny.my-task")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(release(args.run, args.dest)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
