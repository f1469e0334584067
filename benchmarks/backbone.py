"""Forward latency and peak memory of the backbone against ViT-B/16 and ResNet-101.

Each (model, size) runs in its own subprocess so peak memory is measured cleanly: on CPU the
growth of the process's peak RSS over its RSS before the first forward pass; on CUDA
``torch.cuda.max_memory_allocated``. Batch 1, random weights (speed does not depend on them),
``torch.inference_mode``. Latency is the median of the timed runs after a warm-up.

    python benchmarks/backbone.py --device cpu --out benchmarks/results/backbone-cpu.json
    python benchmarks/backbone.py --device cuda --precision bf16 --out ...

A model stops at the first size that fails (out of memory, timeout) or whose predicted time
(previous time × area ratio^exponent) exceeds ``--max-seconds``; the skip is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = {
    # name: (builder key, scaling exponent on the image area used to predict the next size)
    "dvis-base": 1.0,
    "dvis-base-dense": 1.0,
    "vit-b16": 2.0,
    "resnet101": 1.0,
}
SIZES = [256, 512, 1024, 2048, 4096]


def build(name: str, size: int):  # type: ignore[no-untyped-def]
    import torch

    if name.startswith("dvis-base"):
        from dynamicvis_cli.checkpoints.load import load_model

        model = load_model("base", random_weights=True, with_fpn=False, dense=name.endswith("dense"))
        return lambda x: model.backbone(x), model
    if name == "vit-b16":
        import timm

        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0,
                                  img_size=size, dynamic_img_size=True)
        return lambda x: model.forward_features(x), model
    if name == "resnet101":
        import torchvision

        model = torchvision.models.resnet101(weights=None)
        body = torch.nn.Sequential(*list(model.children())[:-2])
        return lambda x: body(x), body
    raise ValueError(name)


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def worker(args: argparse.Namespace) -> None:
    import torch

    device = torch.device(args.device)
    fn, model = build(args.model, args.size)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    model.to(device).eval()
    x = torch.randn(1, 3, args.size, args.size, device=device)
    repeats = args.repeats

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    base_rss = rss_kb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    warm = run() if args.warmup else None
    times = [run() for _ in range(repeats)]
    out = {"seconds": statistics.median(times), "runs": times, "warmup_s": warm}
    if device.type == "cuda":
        out["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        out["peak_mem_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    print(json.dumps(out))


def machine(device: str) -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info["cores"] = os.cpu_count()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    p.add_argument("--max-seconds", type=float, default=240.0, help="per forward pass")
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    results = []
    for name in args.models:
        last: tuple[int, float] | None = None
        for size in args.sizes:
            row: dict[str, object] = {"model": name, "size": size}
            if last is not None:
                predicted = last[1] * (size * size / last[0] ** 2) ** MODELS[name]
                if predicted > args.max_seconds:
                    row["skipped"] = f"predicted {predicted:.0f} s > --max-seconds {args.max_seconds:.0f}"
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr)
                    break
            small = size <= 1024
            cmd = [sys.executable, __file__, "--worker", "--model", name, "--size", str(size),
                   "--device", args.device, "--precision", args.precision,
                   "--repeats", "3" if small else "1", "--warmup", "1" if small else "0"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      timeout=args.max_seconds * (6 if small else 2) + 120)
            except subprocess.TimeoutExpired:
                row["skipped"] = "timeout"
                results.append(row)
                break
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                row["skipped"] = f"failed: {tail[:200]}"
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
                break
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
            last = (size, float(row["seconds"]))  # type: ignore[arg-type]
    report = {"device": args.device, "precision": args.precision, "machine": machine(args.device),
              "date": time.strftime("%Y-%m-%d"), "results": results}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
