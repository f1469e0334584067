"""Fixtures for the standalone scripts' tests: the scripts as modules, release data built once."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
DATA = SHARED / "data"
RELEASE_SETS = ("neon_trees", "dota_harbour", "nwpu_vhr10", "change", "change_dsifn", "dubai")


def run_script(script: str, *args: object) -> subprocess.CompletedProcess[str]:
    """``python REPO/script args...`` as a real subprocess."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True,
                          text=True, check=False)


def load_script(script: str) -> ModuleType:
    """A script of the repository imported as a module (scripts/ and benchmarks/ are not packages)."""
    path = REPO / script
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def release_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``scripts/prepare_release_data.py --out REL`` run once on the real shared data."""
    missing = [d for d in RELEASE_SETS if not (DATA / d).is_dir()]
    if missing:
        pytest.skip(f"needs ../shared/data/{{{','.join(missing)}}}")
    out = tmp_path_factory.mktemp("release") / "REL"
    return out, run_script("scripts/prepare_release_data.py", "--out", out)
