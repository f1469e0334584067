"""Training logs: one JSON object per line (``log.jsonl``) and the same rows as ``log.csv``.

The JSONL file is appended and flushed at every record, so a killed run keeps its log; the CSV
is rewritten whole (atomically) with the union of the columns seen so far. A resumed run drops
the rows of steps after its checkpoint before appending.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from dynamicvis_cli.geo.atomic import atomic_output


class RunLog:
    """Rows of training metrics written to ``OUT/log.jsonl`` and ``OUT/log.csv`` (rank 0 only)."""

    def __init__(self, out: Path, *, enabled: bool = True, resume_step: int | None = None) -> None:
        self.jsonl = out / "log.jsonl"
        self.csv = out / "log.csv"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        if not enabled:
            return
        if resume_step is not None and self.jsonl.is_file():
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if int(row.get("step", 0)) <= resume_step:
                    self.rows.append(row)
        with atomic_output(self.jsonl, overwrite=True) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")
            f.flush()
        columns: list[str] = []
        for r in self.rows:
            columns.extend(k for k in r if k not in columns and not isinstance(r[k], (dict, list)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_output(self.csv, overwrite=True) as tmp:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
