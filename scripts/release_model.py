"""Turn a ``dvis finetune`` run folder into a released model folder: fp16 weights + config.

    python scripts/release_model.py RUN_DIR models/ARCH.TAG

Writes ``models/ARCH.TAG/model.safetensors`` (floating tensors as float16; dvis loads them back
as float32) and ``config.json`` (the run's, with ``provenance.released`` added). The model card
(``MODEL_CARD.md``) is written by hand beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def main(run: Path, dest: Path) -> None:
    state = load_file(str(run / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    dest.mkdir(parents=True, exist_ok=True)
    save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((run / "config.json").read_text())
    config.setdefault("provenance", {})["released"] = f"{dest.name} (fp16 weights of {run.name})"
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps({"out": str(dest), "tensors": len(half),
                      "bytes": (dest / "model.safetensors").stat().st_size}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
