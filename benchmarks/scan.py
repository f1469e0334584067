"""Selective-scan backends at the shapes DynamicVis-B scans at 512 px (both directions stacked).

    python benchmarks/scan.py [--out benchmarks/results/scan-cpu.json]

For each stage: batch 2 (forward + reverse), d_inner = 2·dim, d_state 16, sequence = global
tokens + selected tokens. Reports the median of 5 forward calls per backend, and the whole
backbone's scan time (stage time × number of blocks). This is what ``backend="auto"`` is based on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dynamicvis_cli.nn.scan import BACKENDS

# (stage, d_inner, sequence length at 512 px, blocks in DynamicVis-B)
SHAPES = [(0, 192, 128 + 16384 // 8, 2), (1, 384, 64 + 4096 // 4, 4), (2, 768, 32 + 1024 // 2, 16),
          (3, 1536, 16 + 256, 4)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", nargs="+", default=["numba", "chunked"])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for stage, d_inner, length, blocks in SHAPES:
        u = torch.randn(2, d_inner, length)
        delta = torch.randn(2, d_inner, length)
        A = -torch.exp(torch.randn(d_inner, 16))
        B, C = torch.randn(2, 16, length), torch.randn(2, 16, length)
        D, bias = torch.randn(d_inner), torch.randn(d_inner)
        for name in args.backends:
            fn = BACKENDS[name]
            with torch.inference_mode():
                fn(u, delta, A, B, C, D, None, bias, True)
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    fn(u, delta, A, B, C, D, None, bias, True)
                    times.append(time.perf_counter() - t)
            ms = statistics.median(times) * 1e3
            rows.append({"stage": stage, "d_inner": d_inner, "length": length, "backend": name,
                         "ms": round(ms, 2), "ms_all_blocks": round(ms * blocks, 1)})
            print(json.dumps(rows[-1]))
    totals = {n: round(sum(r["ms_all_blocks"] for r in rows if r["backend"] == n), 1) for n in args.backends}
    report = {"threads": torch.get_num_threads(), "rows": rows, "backbone_scan_ms": totals}
    print(json.dumps({"backbone_scan_ms": totals}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
