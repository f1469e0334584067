"""Run manifests: one JSON line per finished input, so that a re-run can resume.

``--manifest run.jsonl`` appends a line when an input's outputs are complete (after their
atomic rename): the input (path, size, mtime), each output with its sha256, the model and its
weights' sha256, and the *settings*, the flags that change results (tile size, overlap, blend,
TTA, thresholds, classes, bands, precision, ...). Every line carries the whole run key, so
lines can be appended by several processes (``--shard`` jobs, the ranks of a distributed run)
with no header to agree on. Each line is written with a single ``write`` on a file opened for
appending, then flushed and fsynced: a reader sees whole lines, or at worst a torn last line of a
killed run, which is ignored.

``--resume`` skips an input whose line is there, whose input is unchanged (size and mtime) and
whose outputs all exist with the recorded checksums; everything else is (re)done, replacing
whatever partial output a killed run left. A manifest written by another model, other weights or
other settings is refused (a usage error naming the difference) unless ``--force``, which
ignores its lines (their inputs are redone) and appends under the new key.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamicvis_cli.errors import DvisUsageError

FORMAT = 1


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    from dynamicvis_cli.checkpoints.store import sha256

    return sha256(Path(path))


def _canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples → lists, keys sorted), Nones dropped."""
    loaded: dict[str, Any] = json.loads(json.dumps({k: v for k, v in settings.items() if v is not None},
                                                   sort_keys=True, default=str))
    return loaded


@dataclass(frozen=True)
class RunKey:
    """What makes two runs' outputs comparable: model, weights and result-changing settings."""

    model: str
    weights_sha256: str
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "weights_sha256": self.weights_sha256,
                "settings": _canonical(self.settings)}

    def differences(self, line: Mapping[str, Any]) -> list[str]:
        """What differs between this key and a manifest line, as ``name: old → new`` strings."""
        diffs = []
        for name in ("model", "weights_sha256"):
            if line.get(name) != getattr(self, name):
                diffs.append(f"{name}: {line.get(name)} → {getattr(self, name)}")
        old, new = line.get("settings") or {}, _canonical(self.settings)
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                diffs.append(f"{name}: {old.get(name, '(unset)')} → {new.get(name, '(unset)')}")
        return diffs


@dataclass(frozen=True)
class Decision:
    """Whether an input is done, and if not, why it is (re)done."""

    done: bool
    reason: str


def _input_state(path: Path) -> dict[str, int]:
    st = Path(path).stat()
    return {"input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns}


class Manifest:
    """A run manifest at ``path`` for runs with key ``key`` (see the module docstring).

    Attributes:
        path: the JSONL file.
        key: this run's model, weights and settings.
        entries: the last valid line per input (absolute path) under this key.
        ignored: lines ignored: torn, unreadable, or (with ``force``) from another key.
    """

    def __init__(self, path: Path, key: RunKey, *, force: bool = False) -> None:
        """Read the manifest (if it exists) and check that it was written under ``key``.

        Raises:
            DvisUsageError: the manifest is not a dvis manifest, or (without ``force``) it was
                written by another model, other weights or other settings.
        """
        self.path = Path(path)
        self.key = key
        self.entries: dict[str, dict[str, Any]] = {}
        self.ignored = 0
        if not self.path.exists():
            return
        if self.path.is_dir():
            raise DvisUsageError(f"{self.path}: --manifest names a folder; give a .jsonl file")
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or "input" not in line or "outputs" not in line:
                    raise ValueError
            except ValueError:
                if number == len(lines):  # a torn last line: a run killed while appending
                    self.ignored += 1
                    continue
                raise DvisUsageError(
                    f"{self.path}: line {number} is not a dvis manifest line; give a new --manifest file"
                ) from None
            diffs = key.differences(line)
            if diffs:
                if not force:
                    raise DvisUsageError(
                        f"{self.path}: written by a different run ({'; '.join(diffs[:4])}); "
                        "use another --manifest, or pass --force to redo its inputs with these settings"
                    )
                self.ignored += 1
                continue
            self.entries[line["input"]] = line

    def decide(self, src: Path, outputs: Sequence[Path]) -> Decision:
        """Is ``src`` done (its line is here, input unchanged, every output as recorded)?

        Args:
            src: the input.
            outputs: the outputs this run would write for it.
        """
        line = self.entries.get(str(Path(src).resolve()))
        if line is None:
            return Decision(False, "not in the manifest")
        state = _input_state(src)
        if any(line.get(k) != v for k, v in state.items()):
            return Decision(False, "input changed since it was recorded")
        recorded: dict[str, str] = line["outputs"]
        for out in outputs:
            name = str(Path(out).resolve())
            if name not in recorded:
                return Decision(False, f"{out} is not among its recorded outputs")
            if not Path(out).exists():
                return Decision(False, f"{out} no longer exists")
        for name, digest in recorded.items():
            if not Path(name).exists():
                return Decision(False, f"{name} no longer exists")
            if file_sha256(Path(name)) != digest:
                return Decision(False, f"{name} differs from the recorded checksum")
        return Decision(True, "done")

    def record(self, src: Path, outputs: Iterable[Path], **extra: Any) -> dict[str, Any]:
        """Append the line for a finished input (outputs hashed now); returns the line.

        The line is one ``write`` to the file opened with ``O_APPEND``, then fsynced, so lines
        appended by several processes never interleave.
        """
        line: dict[str, Any] = {
            "manifest": FORMAT,
            "input": str(Path(src).resolve()),
            **_input_state(src),
            "outputs": {str(Path(o).resolve()): file_sha256(Path(o)) for o in outputs},
            **self.key.as_dict(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        data = (json.dumps(line, default=str) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a full disk; the torn line is ignored on reading
                raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.entries[line["input"]] = line
        return line


_TMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp-(?P<pid>\d+)-[0-9a-f]+|part-[0-9a-f]+\.tif)$")


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Remove what a killed run left beside ``output`` (``.NAME.tmp-PID-…``, ``.NAME.part-….tif``).

    Temporaries of a process that is still alive are kept (and then so are the ``.part``
    intermediates, which carry no process id).

    Returns:
        The paths removed.
    """
    import shutil

    output = Path(output)
    folder = output.parent
    if not folder.is_dir():
        return []
    mine = [p for p in folder.iterdir() if (m := _TMP.match(p.name)) and m["name"] == output.name]
    alive = any(_alive(int(m["pid"])) for p in mine if (m := _TMP.match(p.name)) and m["pid"])
    removed = []
    for p in mine:
        m = _TMP.match(p.name)
        assert m is not None
        if (m["pid"] and _alive(int(m["pid"]))) or (not m["pid"] and alive):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
