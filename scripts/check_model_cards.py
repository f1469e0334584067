"""Check that each model card states what the ``dvis evaluate`` commands it quotes measure.

For every ``MODEL_CARD.md`` under ``models/``: find the ``dvis evaluate`` commands it quotes
(console lines ``$ dvis evaluate ...`` and inline code spans), put real paths in place of the
card's placeholders, run each one on the released weights (a real ``dvis`` subprocess), and look
in the part of the card that quotes the command (up to the next ``## `` heading) for each headline
metric of the report. A metric passes when the card states a number within ``--tolerance`` of it
(default 0.001: cards round to three decimals, and another CPU's arithmetic may move the last one).

Placeholders the cards use:

- ``REL/...``: ``python scripts/prepare_release_data.py --out REL`` (built in ``--work`` unless
  ``--rel`` names one already built);
- ``CHIPS[/...]``: ``python benchmarks/make_landcover_chips.py --out CHIPS --split "Tile 8=select"``
  (built in ``--work`` unless ``--chips`` names one);
- ``DUBAI_VAL``: the held-out Dubai tile, ``../shared/data/dubai/Tile 6``;
- ``palette.json``: written from the JSON object the card gives for it.

Usage::

    python scripts/check_model_cards.py --work /tmp/cards [--model tiny.neon-trees] [-o report.json]

Exit code 0 when every metric is found in its card, 1 when one is not (or a command fails),
2 on bad usage. The work folder must be outside the repository.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"

#: Report entries each task's cards must state: (name shown, path into the report).
HEADLINE: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "detect": (("AP", ("metrics", "ap")), ("AP50", ("metrics", "ap50")),
               ("AP75", ("metrics", "ap75")), ("AR100", ("metrics", "ar100"))),
    "segment": (("mIoU", ("metrics", "miou")), ("pixel accuracy", ("metrics", "accuracy"))),
    "classify": (("accuracy", ("metrics", "accuracy")),),
    "change": (("precision", ("metrics", "precision")), ("recall", ("metrics", "recall")),
               ("F1", ("metrics", "f1")), ("IoU", ("metrics", "iou")),
               ("accuracy", ("metrics", "accuracy"))),
    "retrieval": (("binary mAP@k", ("results", "binary", "map")),
                  ("binary precision@k", ("results", "binary", "precision")),
                  ("float mAP@k", ("results", "float", "map"))),
}

_NUMBER = re.compile(r"(?<![\d.])\d+\.\d+(?!\.?\d)")
_CONSOLE = re.compile(r"^\$ (dvis evaluate (?:[^\n]*\\\n)*[^\n]*)$", re.MULTILINE)
_INLINE = re.compile(r"`(dvis evaluate [^`]+)`")
_PALETTE = re.compile(r"`palette\.json` is\s+`(\{[^`]+\})`")


@dataclass
class Quote:
    """One ``dvis evaluate`` command quoted by a card and the card text that reports on it."""

    argv: list[str]
    line: int
    section: str


@dataclass
class Check:
    """The outcome of one quoted command: its report's headline metrics against the card."""

    card: str
    line: int
    command: str
    returncode: int = 0
    error: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.metrics) and all(m["ok"] for m in self.metrics)


def quoted_commands(card: str) -> list[Quote]:
    """The ``dvis evaluate`` commands of a card's text, in order, with the section each sits in."""
    found: list[tuple[int, str]] = [(m.start(), m.group(1)) for m in _CONSOLE.finditer(card)]
    found += [(m.start(), m.group(1)) for m in _INLINE.finditer(card)]
    quotes = []
    for start, text in sorted(found):
        line_start = card.rfind("\n", 0, start) + 1
        end = card.find("\n## ", start)
        argv = shlex.split(text.replace("\\\n", " "), comments=True)
        quotes.append(Quote(argv, card.count("\n", 0, start) + 1,
                            card[line_start:end if end >= 0 else len(card)]))
    return quotes


def card_palette(card: str) -> dict[str, Any] | None:
    """The palette JSON object a card gives for ``palette.json``, if any."""
    m = _PALETTE.search(card)
    return json.loads(m.group(1).replace("\n", " ")) if m else None


def option(argv: list[str], *names: str) -> str | None:
    """The value given to the first of ``names`` in ``argv`` (None when absent)."""
    for i, tok in enumerate(argv[:-1]):
        if tok in names:
            return argv[i + 1]
    return None


def headline(task: str, report: dict[str, Any]) -> dict[str, float]:
    """The headline metrics of an evaluate report (those a card must state)."""
    out = {}
    for name, path in HEADLINE.get(task, ()):
        if path[0] == "results":
            value = next((r[path[2]] for r in report.get("results", [])
                          if r.get("representation") == path[1]), None)
        else:
            value = report.get(path[0], {}).get(path[1])
        if isinstance(value, (int, float)) and value >= 0:  # COCO writes -1 for "no such objects"
            out[name] = float(value)
    return out


def compare(section: str, values: dict[str, float], tolerance: float) -> list[dict[str, Any]]:
    """For each measured value, the nearest number the card's section states, and whether it is
    within ``tolerance``."""
    stated = [float(x) for x in _NUMBER.findall(section)]
    rows = []
    for name, value in values.items():
        nearest = min(stated, key=lambda s: abs(s - value)) if stated else None
        rows.append({"metric": name, "measured": round(value, 4), "card": nearest,
                     "ok": nearest is not None and abs(nearest - value) <= tolerance + 1e-9})
    return rows


class Workspace:
    """Real paths for the cards' placeholders; data sets are built on first use."""

    def __init__(self, work: Path, shared: Path, rel: Path | None, chips: Path | None) -> None:
        self.work, self.shared = work, shared
        self.rel, self.chips = rel, chips

    def _build(self, script: str, out: Path, *args: str) -> Path:
        r = subprocess.run([sys.executable, str(REPO / script), "--out", str(out), *args],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{script}: failed ({' '.join(r.stderr.strip().splitlines()[-1:])})")
        return out

    def path(self, token: str, card: str) -> str:
        head, sep, rest = token.partition("/")
        if head == "REL":
            if self.rel is None:
                self.rel = self._build("scripts/prepare_release_data.py", self.work / "REL",
                                       "--shared", str(self.shared))
            return str(self.rel / rest) if sep else str(self.rel)
        if head == "CHIPS":
            if self.chips is None:
                self.chips = self._build("benchmarks/make_landcover_chips.py", self.work / "CHIPS",
                                         "--data", str(self.shared / "dubai"), "--split", "Tile 8=select")
            return str(self.chips / rest) if sep else str(self.chips)
        if token == "DUBAI_VAL":
            return str(self.shared / "dubai" / "Tile 6")
        if token == "palette.json":
            palette = card_palette(card)
            if palette is None:
                raise RuntimeError("the card uses palette.json but gives no palette for it")
            path = self.work / "palette.json"
            path.write_text(json.dumps(palette))
            return str(path)
        return token


def check_card(card_path: Path, ws: Workspace, tolerance: float) -> list[Check]:
    card = card_path.read_text()
    name = card_path.parent.name
    quotes = quoted_commands(card)
    if not quotes:
        return [Check(name, 0, "", 1, "the card quotes no `dvis evaluate` command")]
    checks = []
    for n, q in enumerate(quotes):
        check = Check(name, q.line, shlex.join(q.argv))
        checks.append(check)
        try:
            argv = [ws.path(tok, card) for tok in q.argv[2:]]
        except RuntimeError as exc:
            check.returncode, check.error = 1, str(exc)
            continue
        out = ws.work / f"{name}-{n}.json"
        r = subprocess.run([sys.executable, "-m", "dynamicvis_cli", "evaluate", *argv, "-q",
                            "--overwrite", "-o", str(out)], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            check.returncode = r.returncode
            check.error = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
            continue
        task = option(q.argv, "--task") or ""
        check.metrics = compare(q.section, headline(task, json.loads(out.read_text())), tolerance)
        if not check.metrics:
            check.returncode, check.error = 1, f"--task {task}: no headline metric in the report"
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="work folder (outside the repository)")
    ap.add_argument("--models", type=Path, default=REPO / "models", help="folder of model folders")
    ap.add_argument("--model", action="append", default=[], help="check only this model (repeatable)")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data/ folder")
    ap.add_argument("--rel", type=Path, help="REL already built by scripts/prepare_release_data.py")
    ap.add_argument("--chips", type=Path, help="CHIPS already built by make_landcover_chips.py")
    ap.add_argument("--tolerance", type=float, default=0.001)
    ap.add_argument("-o", "--output", type=Path, help="also write the results (JSON)")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    if work == REPO or REPO in work.parents:
        print(f"error: {work} is inside the repository; work elsewhere", file=sys.stderr)
        return 2
    cards = sorted(args.models.glob("*/MODEL_CARD.md"))
    if args.model:
        cards = [c for c in cards if c.parent.name in args.model]
        missing = set(args.model) - {c.parent.name for c in cards}
        if missing:
            print(f"error: {args.models}: no model card for {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    if not cards:
        print(f"error: {args.models}: no MODEL_CARD.md found", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    ws = Workspace(work, args.shared, args.rel, args.chips)
    checks = [c for card in cards for c in check_card(card, ws, args.tolerance)]
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.card}:{c.line}  {c.command}")
        if c.error:
            print(f"       error: {c.error}")
        for m in c.metrics:
            print(f"       {'ok  ' if m['ok'] else 'FAIL'} {m['metric']}: measured {m['measured']:.4f}, "
                  f"card {m['card']}")
    if args.output:
        args.output.write_text(json.dumps([c.__dict__ | {"ok": c.ok} for c in checks], indent=1) + "\n")
    bad = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(bad)} of {len(checks)} quoted commands reproduce their cards' metrics")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
