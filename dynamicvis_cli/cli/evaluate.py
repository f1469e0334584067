"""``dvis evaluate --task TASK``: score a model on labelled data.

Each task is one function in :data:`TASKS`, called with the parsed options; adding a task
(classify, detect, segment, change) means adding a function and a row there.
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


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "retrieval": _retrieval,
}


@app.command("evaluate")
def evaluate(
    task: Annotated[str, typer.Option("--task", help=f"What to evaluate: {', '.join(TASKS)}.")],
    data: Annotated[Path | None, typer.Option("--data", help="Labelled data: class folders, or a CSV path,labels[,split].")] = None,
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
            "bits": bits,
            "model": model, "random_weights": random_weights, "seed": seed, "bands": bands,
            "batch_size": batch_size, "device": device, "precision": precision.value, "quiet": quiet}
    report = {"command": "evaluate", "task": task, **TASKS[task](opts)}
    if output is not None:
        with atomic_output(output, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        report["output"] = str(output)
    emit(report)
