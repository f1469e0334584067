"""A 40,000 × 40,000 scene, tiled and striped, through ``dvis segment`` under a 4 GB cgroup.

Opt-in (about 27 minutes per layout on a 2-core CPU): ``DVIS_SCALE_TESTS=1 python -m pytest
tests/cli/test_scale.py``. The same runs, as a benchmark: ``dvis bench --scene 5000 --scene 40000
--layout striped --memory-limit 4G --max-memory 4G --no-vector``; results in docs/benchmarks.md
(``DVIS_SCALE_REPORT=benchmarks/results`` makes this test keep its report there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dynamicvis_cli.bench import BenchOptions, MemoryLimit, bench_sizes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("DVIS_SCALE_TESTS") != "1", reason="set DVIS_SCALE_TESTS=1 (about 1 h)"),
]
LIMIT = 4 << 30


@pytest.mark.parametrize("layout", ["tiled", "striped"])
def test_a_40k_scene_runs_in_4gb_with_the_memory_of_a_5k_scene(layout: str, tmp_path: Path) -> None:
    with MemoryLimit(LIMIT) as probe:
        if not probe.available:
            pytest.skip("this process may not create a memory cgroup")
    opts = BenchOptions(model="tiny", tile=512, overlap=64, batch=4, workers=0, vector=False, max_memory="4G")
    report = bench_sizes([5000, 40_000], opts, layout=layout, workdir=tmp_path, limit=LIMIT)
    if os.environ.get("DVIS_SCALE_REPORT"):  # keep the measured rows for docs/benchmarks.md
        out = Path(os.environ["DVIS_SCALE_REPORT"]) / f"scale-40k-{layout}-cpu.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
    small, big = report["rows"]
    for row in (small, big):
        assert row["oom_kills"] == 0 and row["limit_mb"] == 4096
        assert row["cog_valid"] and row["same_grid"], row["cog_errors"]
    assert big["peak_rss_mb"] <= 1.10 * small["peak_rss_mb"], (small, big)
