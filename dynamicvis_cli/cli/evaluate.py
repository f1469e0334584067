"""``dvis evaluate --task TASK``: score a model on labelled data.

Each task is one function in :data:`TASKS`, called with the parsed options: retrieval
(:mod:`dynamicvis_cli.retrieval.evaluate`) and the fine-tuned tasks classify, segment, change,
detect and instance (:mod:`dynamicvis_cli.evaluate.tasks`). The JSON report goes to stdout, a
table of the main metrics to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dynamicvis_cli.cli import options as o

app = typer.Typer()


def _retrieval(opts: dict[str, Any]) -> dict[str, Any]:
    """mAP@k and precision@k of float embeddings, binary codes and short hashes."""
    from dynamicvis_cli.cli.common import progress_bar
    from dynamicvis_cli.cli.output import err
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.retrieval.embed import load_embedder
    from dynamicvis_cli.retrieval.evaluate import evaluate_retrieval, load_labelled

    if opts["data"] is None:
        raise DvisUsageError("--task retrieval needs --data (class folders or a path,labels CSV)")
    gallery = load_labelled(opts["data"], split=opts["split"])
    queries = None
    if opts["queries"] is not None or opts["query_split"] is not None:
        queries = load_labelled(opts["queries"] or opts["data"], split=opts["query_split"])
    try:
        bits = [int(b) for b in opts["bits"].split(",") if b.strip()]
    except ValueError:
        raise DvisUsageError(f"--bits {opts['bits']}: expected comma-separated numbers, e.g. 32,64") from None
    bands = o.parse_bands(opts["bands"])
    embedder = load_embedder(opts["model"], in_chans=len(bands) if bands else None, device=opts["device"],
                             precision=opts["precision"], random_weights=opts["random_weights"],
                             seed=opts["seed"])
    if embedder.random and not opts["quiet"]:
        err.print(f"[yellow]warning:[/] {opts['model']}: random weights; the scores are a floor, "
                  "not a result")
    with progress_bar(opts["quiet"], "evaluate retrieval") as bar:
        report = evaluate_retrieval(embedder, gallery, queries, k=opts["k"], hash_bits=bits,
                                    batch_size=opts["batch_size"], bands=bands, progress=bar)
    return {"model": opts["model"], "weights": embedder.weights, "random_weights": embedder.random, **report}


def _task_model(task: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The evaluation of a fine-tuned ``task`` checkpoint on a dataset in any format finetune reads."""

    def run(opts: dict[str, Any]) -> dict[str, Any]:
        from dynamicvis_cli.cli.common import progress_bar
        from dynamicvis_cli.cli.output import err
        from dynamicvis_cli.errors import DvisUsageError
        from dynamicvis_cli.evaluate.tasks import evaluate_task

        if opts["data"] is None:
            raise DvisUsageError(f"--task {task} needs --data (a dataset as dvis finetune reads it)")
        if opts["queries"] is not None or opts["query_split"] is not None:
            raise DvisUsageError("--queries and --query-split are for --task retrieval")
        with progress_bar(opts["quiet"], f"evaluate {task}") as bar:
            report = evaluate_task(opts["model"], str(opts["data"]), task, format=opts["format"],
                                   palette=opts["palette"], image_root=opts["image_root"],
                                   split=opts["split"], device=opts["device"], precision=opts["precision"],
                                   batch_size=opts["batch_size"], tile_size=opts["tile_size"],
                                   workers=opts["workers"], target_class=opts["target_class"],
                                   random_weights=opts["random_weights"], progress=bar)
        if report["random_weights"] and not opts["quiet"]:
            err.print(f"[yellow]warning:[/] {opts['model']}: random weights; the scores are a floor, "
                      "not a result")
        return report

    run.__doc__ = f"Metrics of a fine-tuned {task} model."
    return run


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "retrieval": _retrieval,
    **{t: _task_model(t) for t in ("classify", "segment", "change", "detect", "instance", "region")},
}

#: Metrics shown in the stderr table, per task (all of them are in the JSON).
_TABLE = {
    "classify": ("accuracy", "precision", "recall", "f1"),
    "region": ("accuracy", "precision", "recall", "f1"),
    "segment": ("miou", "accuracy", "f1", "target_precision", "target_recall", "target_f1", "target_iou"),
    "change": ("precision", "recall", "f1", "iou", "accuracy", "miou"),
    "detect": ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100"),
    "instance": ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100"),
}


def print_table(report: dict[str, Any]) -> None:
    """The main metrics as a readable table on stderr (per class where the task has classes)."""
    from rich.table import Table

    from dynamicvis_cli.cli.output import err

    task = report["task"]
    metrics = report.get("metrics")
    if task not in _TABLE or not isinstance(metrics, dict):
        return
    title = f"{task}: {report['model']} on {report['data']} ({report['items']} items)"
    table = Table(title=title, title_justify="left")
    if task == "instance":
        table.add_column("metric")
        table.add_column("mask", justify="right")
        table.add_column("box", justify="right")
        for key in _TABLE[task]:
            table.add_row(key, _fmt(metrics["mask"].get(key)), _fmt(metrics["box"].get(key)))
    else:
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in _TABLE[task]:
            if key in metrics:
                table.add_row(key + (f" ({metrics['target_class']})" if key.startswith("target_") else ""),
                              _fmt(metrics[key]))
    err.print(table)
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        pc = Table(title="per class", title_justify="left")
        for col in ("class", "precision", "recall", "f1", "iou", "support"):
            pc.add_column(col, justify="left" if col == "class" else "right")
        for name, v in per_class.items():
            pc.add_row(name, *(_fmt(v[k]) for k in ("precision", "recall", "f1", "iou")), str(v["support"]))
        err.print(pc)
    scored = metrics if "per_class_ap" in metrics else metrics.get("mask") or {}
    ap, ap50 = scored.get("per_class_ap"), scored.get("per_class_ap50") or {}
    if isinstance(ap, dict) and ap:
        pc = Table(title="AP per class", title_justify="left")
        pc.add_column("class")
        pc.add_column("AP (0.50:0.95)", justify="right")
        pc.add_column("AP50", justify="right")
        for name, v in ap.items():
            pc.add_row(name, _fmt(v), _fmt(ap50.get(name)))
        err.print(pc)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "n/a" if v < 0 else f"{v:.4f}"
    return str(v)


@app.command("evaluate")
def evaluate(
    task: Annotated[str, typer.Option("--task", help=f"What to evaluate: {', '.join(TASKS)}.")],
    data: Annotated[Path | None, typer.Option(
        "--data", help="Labelled data: retrieval: class folders or a CSV path,labels[,split]; other tasks: "
                       "a dataset as dvis finetune reads it (folder, COCO .json or geo .yaml).")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="Dataset format (not retrieval): auto, imagefolder, masks, change-pairs, coco, "
                         "yolo, nwpu, voc, dota, fmow, geo.")] = "auto",
    palette: Annotated[str | None, typer.Option(
        "--palette", help="Colour masks: JSON/YAML file mapping class names to #RRGGBB.")] = None,
    image_root: Annotated[str | None, typer.Option(
        "--image-root", help="COCO: folder of the images (default: beside the .json).")] = None,
    target_class: Annotated[str | None, typer.Option(
        "--target-class", help="Segment/change: the class whose precision/recall/F1/IoU are reported "
                               "(default: the second of two classes).")] = None,
    tile_size: o.TileOpt = None,
    workers: o.WorkersOpt = 0,
    queries: Annotated[Path | None, typer.Option("--queries", help="Retrieval: labelled query images (default: --data, leave-one-out).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Use this split of --data (a subfolder, or the CSV's split column).")] = None,
    query_split: Annotated[str | None, typer.Option("--query-split", help="Retrieval: queries are this split (of --queries or --data).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Retrieval: ranks scored (mAP@k, precision@k).")] = 20,
    bits: Annotated[str, typer.Option("--bits", help="Retrieval: short-hash lengths to compare, e.g. 32,64.")] = "64",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the report (JSON).")] = None,
    model: o.ModelOpt = "base",
    random_weights: o.RandomOpt = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for building a model with random weights.")] = 0,
    bands: o.BandsOpt = None,
    batch_size: o.BatchOpt = 16,
    device: o.DeviceOpt = "auto",
    precision: o.PrecisionOpt = o.Precision.fp32,
    overwrite: o.OverwriteOpt = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Evaluate a model on labelled data; the report is the JSON summary (and -o)."""
    from dynamicvis_cli.cli.output import emit
    from dynamicvis_cli.errors import DvisUsageError
    from dynamicvis_cli.geo.atomic import atomic_output, check_writable

    if task not in TASKS:
        raise DvisUsageError(f"--task {task}: choose one of {', '.join(TASKS)}")
    if output is not None:
        if output.suffix.lower() != ".json":
            raise DvisUsageError(f"{output}: the report is written as .json")
        check_writable(output, overwrite=overwrite)
    opts = {"data": data, "queries": queries, "split": split, "query_split": query_split, "k": k,
            "bits": bits, "format": format, "palette": palette, "image_root": image_root,
            "target_class": target_class, "tile_size": tile_size, "workers": workers,
            "model": model, "random_weights": random_weights, "seed": seed, "bands": bands,
            "batch_size": batch_size, "device": device, "precision": precision.value, "quiet": quiet}
    report = {"command": "evaluate", "task": task, **TASKS[task](opts)}
    if output is not None:
        with atomic_output(output, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        report["output"] = str(output)
    if not quiet:
        print_table(report)
    emit(report)
