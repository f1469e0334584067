"""Inference on several devices or processes: ``torchrun -m dynamicvis_cli ...`` or ``--devices``.

Every rank runs the same command line. How the work is split:

- *many inputs* (at least one per rank): rank ``r`` of ``N`` takes inputs ``r, r + N, ...`` of
  the (sharded, resumed) job list, as ``--shard r+1/N`` would, and writes their outputs
  itself; rank 0 gathers the per-input summaries and prints the one JSON summary.
- *one scene* (fewer inputs than ranks): the scene's tile rows are cut into ``N`` contiguous
  bands (:func:`split_evenly`), one per rank; rank 0 alone writes the output.

  Dense maps (:func:`band`): rank ``r`` *owns* the scene rows from the start of its first tile
  row to the start of the next rank's first one, and runs every tile that covers them — its
  own tile rows plus the one or two rows before them that reach into its rows (the seam costs
  those tiles twice). Each rank stitches with the same :class:`DenseStitcher`, adding the same
  tiles in the same order, so every owned pixel gets exactly the sums of a one-process run
  (bit for bit, given the same per-tile model outputs). Ranks keep their class ids (uint8) in
  a temporary file and send them to rank 0 in chunks of a few MB after all ranks have finished;
  rank 0 writes them into its COG. Data moved: one byte per pixel.

  Boxes: each rank runs its own tile rows and applies the per-tile rules
  (:meth:`BoxMerger.admit`), rank 0 gathers the admitted detections and adds them in plan
  order to one :class:`BoxMerger`, so seams between ranks are merged exactly as seams between
  tiles are, and the result equals a one-process run's.

Failures: after computing, the ranks exchange their status; if any rank failed, every rank
raises that error and rank 0's output is never created (outputs are atomic). A rank that died
shows up as a :class:`DistributedError` on the others (gloo notices the closed connection); a
rank that never starts makes the others fail after the connect timeout (``DVIS_DIST_CONNECT_TIMEOUT``
seconds, default 300). Collectives wait up to ``DVIS_DIST_TIMEOUT`` seconds (default 24 h:
a rank that finished its share waits for the slowest one).

Backends: gloo on CPU, NCCL on CUDA (plus a gloo group, which carries everything dvis moves:
summaries, detections and class ids are CPU data). Random weights (``--random-weights``) are
broadcast from rank 0, so every rank runs the same model.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from dynamicvis_cli.errors import DvisError, DvisUsageError

T = TypeVar("T")

ENV_TIMEOUT = "DVIS_DIST_TIMEOUT"
ENV_CONNECT_TIMEOUT = "DVIS_DIST_CONNECT_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600.0
DEFAULT_CONNECT_TIMEOUT_S = 300.0


class DistributedError(DvisError, RuntimeError):
    """The ranks of a distributed run could not start together, or one of them stopped."""


class RankFailedError(DvisError):
    """Another rank of a distributed run failed; carries that rank's message and exit code."""

    def __init__(self, rank: int, message: str, exit_code: int) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank = rank
        self.exit_code = exit_code


class ReportedElsewhere(DvisError):
    """This rank's failure was handed to rank 0, which reports it; carries its exit code."""

    def __init__(self, exit_code: int, message: str = "") -> None:
        super().__init__(f"reported by rank 0: {message}" if message else "reported by rank 0")
        self.exit_code = exit_code


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) of an exception, as the CLI would report it."""
    if isinstance(exc, DvisError):
        return str(exc), exc.exit_code
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"internal error: {type(exc).__name__}: {first}", 1


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise DvisUsageError(f"{name}={text!r}: expected a number of seconds") from None
    if value <= 0:
        raise DvisUsageError(f"{name}={text!r}: must be positive")
    return value


def env_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment; None outside a launcher."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise DvisUsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    return rank, size, local


def parse_devices(text: str | None) -> list[str] | None:
    """``--devices cuda:0,cuda:1`` → ['cuda:0', 'cuda:1']; None stays None."""
    if text is None:
        return None
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise DvisUsageError(f"--devices {text!r}: expected a comma-separated list, e.g. cuda:0,cuda:1")
    return devices


def rank_device(device: str, devices: Sequence[str] | None) -> str:
    """The device this process runs on.

    Under a launcher: ``devices[LOCAL_RANK]`` when ``--devices`` is given (one per rank), else
    ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` on a machine with CUDA, else ``device``. Outside a
    launcher: ``device``, or the single entry of ``--devices``.

    Raises:
        DvisUsageError: ``--devices`` does not give one device per rank.
    """
    env = env_rank()
    if devices:
        if env is None or env[1] == 1:
            if len(devices) > 1:
                raise DvisUsageError(f"--devices {','.join(devices)}: one process cannot use several devices")
            return devices[0]
        if len(devices) != env[1]:
            raise DvisUsageError(
                f"--devices {','.join(devices)}: {len(devices)} devices for {env[1]} ranks; give one per rank"
            )
        return devices[env[2]]
    if env is not None and env[1] > 1 and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{env[2] % torch.cuda.device_count()}"
    return device


@dataclass
class World:
    """This process's place in a run: rank, number of ranks, and the collectives dvis uses.

    A plain ``World()`` is a one-process run; its collectives return their input.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    group: Any = field(default=None, repr=False)  # gloo group for CPU data (None: the default)

    @property
    def main(self) -> bool:
        """Rank 0: the one that merges, writes merged outputs and prints the summary."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # gloo/NCCL report a dead or hung peer as RuntimeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {what} failed ({first}); another rank stopped "
                "or is unreachable (see its error)"
            ) from exc

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.main else None
        self._call("gathering results", dist.gather_object, obj, out, dst=0, group=self.group)
        return out

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` on every rank (in rank order)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self._call("exchanging status", dist.all_gather_object, out, obj, group=self.group)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        self._call("receiving from rank 0", dist.broadcast_object_list, box, src=0, group=self.group)
        return box[0]

    def send(self, tensor: Any, dst: int) -> None:
        """Send a CPU tensor to rank ``dst`` (which calls :meth:`recv`)."""
        import torch.distributed as dist

        self._call(f"sending to rank {dst}", dist.send, tensor, dst, group=self.group)

    def recv(self, tensor: Any, src: int) -> None:
        """Receive into a CPU tensor from rank ``src``."""
        import torch.distributed as dist

        self._call(f"receiving from rank {src}", dist.recv, tensor, src, group=self.group)

    def agree(self, error: BaseException | None) -> None:
        """Exchange success or failure; if any rank failed, raise on every rank.

        Rank 0 re-raises its own ``error``, or raises :class:`RankFailedError` with the first
        failing rank's message and exit code; a failing rank other than 0 raises
        :class:`ReportedElsewhere` (from its error), the others :class:`RankFailedError`, so
        that a command line reports each failure once, on rank 0. A one-process world
        re-raises ``error`` (if any).
        """
        if not self.distributed:
            if error is not None:
                raise error
            return
        mine = None if error is None else (self.rank, *describe_failure(error))
        failed = [s for s in self.all_gather(mine) if s is not None]
        if error is not None and self.main:
            raise error
        if error is not None:
            raise ReportedElsewhere(describe_failure(error)[1], describe_failure(error)[0]) from error
        if failed:
            rank, message, code = failed[0]
            raise RankFailedError(rank, message, code)

    def broadcast_module(self, module: Any) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank (random weights)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        for tensor in [*module.parameters(), *module.buffers()]:
            cpu = tensor.detach().to("cpu").contiguous()
            self._call("sharing the weights", dist.broadcast, cpu, 0, group=self.group)
            with torch.no_grad():
                tensor.copy_(cpu)


_WORLD: World | None = None


def init_world(device: str) -> World:
    """Join the run this process was launched into (torchrun's environment), once per process.

    Outside a launcher, or with one rank, returns a one-process :class:`World`.

    Raises:
        DistributedError: the other ranks did not join within the connect timeout.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    env = env_rank()
    if env is None or env[1] <= 1:
        _WORLD = World()
        return _WORLD
    import torch
    import torch.distributed as dist

    from dynamicvis_cli.infer.runner import resolve_device

    rank, size, local = env
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    connect = _seconds(ENV_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT_S)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        if cuda:
            torch.cuda.set_device(dev)
        from torch.distributed.rendezvous import rendezvous

        store, _, _ = next(rendezvous("env://", timeout=timedelta(seconds=connect)))
        dist.init_process_group(backend, store=store, rank=rank, world_size=size,
                                timeout=timedelta(seconds=_seconds(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)))
        group = dist.new_group(backend="gloo") if cuda else None
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"rank {rank} of {size}: could not reach the other ranks at {where} within {connect:g} s "
            f"({first}); start every rank (torchrun --nproc-per-node {size} or --devices)"
        ) from exc
    _WORLD = World(rank, size, local, backend, group)
    return _WORLD


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    global _WORLD
    if _WORLD is not None and _WORLD.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _WORLD = None


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """``[a, b)`` ranges cutting ``range(n)`` into ``parts`` contiguous pieces.

    Sizes differ by at most one, the larger ones first; with more parts than items the last
    pieces are empty.
    """
    if parts < 1:
        raise DvisUsageError(f"cannot split into {parts} parts")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def rank_share(items: Sequence[T], world: World) -> list[T]:
    """Rank ``r`` of ``N``'s share of ``items``: items ``r, r + N, ...`` (as ``--shard r+1/N``)."""
    return [x for i, x in enumerate(items) if i % world.size == world.rank]


@dataclass(frozen=True)
class Band:
    """One rank's share of a scene split by tile rows.

    Attributes:
        owned: tile rows ``[a, b)`` this rank answers for (its tiles' boxes; its share of tiles).
        run: tile rows ``[a', b)`` it runs: ``owned``, plus for dense maps the earlier rows whose
            tiles reach into its pixel rows.
        pixels: scene rows ``[y0, y1)`` whose dense values this rank emits (empty for an empty
            band).
    """

    owned: tuple[int, int]
    run: tuple[int, int]
    pixels: tuple[int, int]

    @property
    def empty(self) -> bool:
        return self.owned[0] >= self.owned[1]


def band(row_starts: Sequence[int], height: int, tile: int, rank: int, size: int, *,
         dense: bool) -> Band:
    """Rank ``rank``'s band of a scene whose tile rows start at ``row_starts``.

    Args:
        row_starts: the plan's tile-row offsets (:class:`~dynamicvis_cli.infer.tiling.TileGrid`).
        height: scene rows.
        tile: tile side.
        rank: this rank.
        size: number of ranks.
        dense: include the earlier tile rows that reach into the band's pixel rows (dense
            stitching needs every tile covering a pixel; boxes do not).
    """
    n = len(row_starts)
    a, b = split_evenly(n, size)[rank]

    def y(i: int) -> int:
        return 0 if i == 0 else (height if i >= n else row_starts[i])

    y0, y1 = y(a), y(b)
    first = a
    if dense and a < b:
        first = min(i for i in range(n) if row_starts[i] + tile > y0)
    return Band(owned=(a, b), run=(min(first, a), b), pixels=(y0, y1))


def free_port() -> int:
    """A TCP port free on this machine now (for a launcher's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: Sequence[str], devices: Sequence[str]) -> int:
    """Run ``python -m dynamicvis_cli ARGV`` once per device through torch.distributed.run.

    What ``--devices a,b,...`` does outside a launcher: one process per device on this machine
    (torchrun's ``--standalone`` rendezvous on a free port), each picking ``devices[LOCAL_RANK]``.
    Unless ``OMP_NUM_THREADS`` (``NUMBA_NUM_THREADS``) is set, each process gets
    ``cpu_count // len(devices)`` threads for torch (and for the numba scan kernel).

    Returns:
        The exit code of rank 0 (the command's exit code), or of the first rank that failed.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    n = len(devices)
    threads = str(max(1, (os.cpu_count() or 1) // n))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", threads)  # the CPU scan kernel's threads
    # The ranks print their own one-line errors; the agent's failure report would repeat them
    # as a multi-line table.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    argv = ["--standalone", "--nproc-per-node", str(n), "--module", "dynamicvis_cli", *argv]
    args = parse_args(argv)  # type: ignore[no-untyped-call]
    try:
        run(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as exc:
        failures = exc.failures
        rank = 0 if 0 in failures else min(failures)
        code = failures[rank].exitcode
        if code < 0:
            sys.stderr.write(f"dvis: error: rank {rank} of {n} was killed by signal {-code}\n")
            return 1
        return code if code else 1
    return 0
