"""Multi-process training through torchrun (DDP): gloo on CPU, NCCL on CUDA.

``torchrun --nproc_per_node N [--nnodes M ...] -m dynamicvis_cli finetune ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; without them a run is one process.
Only rank 0 writes checkpoints and logs. Each rank loads its own share of every global batch, so
the global batch (and, with the router noise off, the result) does not depend on the number of
processes; see docs/finetune.md. BatchNorm layers can be synchronised across the processes on
CUDA (:func:`wants_sync_bn`, :func:`to_sync_batchnorm`, and back with :func:`from_sync_batchnorm`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """The mean of each value over the ranks (for logs)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist())}


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- SyncBatchNorm ------------------------------------------------------------------------------


def wants_sync_bn(mode: str, device: torch.device, info: DistInfo) -> bool:
    """Whether to train with SyncBatchNorm: ``auto`` on CUDA with several processes, ``on``
    likewise but refused off CUDA (torch's SyncBatchNorm runs on CUDA only), ``off`` never.

    Raises:
        DvisUsageError: ``on`` on a device that is not CUDA.
    """
    from dynamicvis_cli.errors import DvisUsageError

    if mode == "on" and device.type != "cuda":
        raise DvisUsageError(f"sync_bn on needs CUDA devices (torch's SyncBatchNorm runs on CUDA only), not "
                             f"{device.type}; use sync_bn=auto or off")
    if mode == "off":
        return False
    return device.type == "cuda" and info.enabled


def count_batchnorm(module: torch.nn.Module) -> int:
    """Number of BatchNorm layers (plain or synchronised) in ``module``."""
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def to_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm*d below it replaced by SyncBatchNorm, in place (torch's
    ``convert_sync_batchnorm``): the new layers hold the same parameter and buffer tensors, so an
    optimiser built before keeps working, and the state-dict keys do not change. Each new layer
    remembers its original class for :func:`from_sync_batchnorm`."""
    batchnorm = torch.nn.modules.batchnorm._BatchNorm
    originals = {name: type(m) for name, m in module.named_modules()
                 if isinstance(m, batchnorm) and not isinstance(m, torch.nn.SyncBatchNorm)}
    if "" in originals:
        raise ValueError("to_sync_batchnorm converts the layers inside a module, not a lone BatchNorm")
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[no-untyped-call]  # in place
    for name, m in module.named_modules():
        if name in originals and isinstance(m, torch.nn.SyncBatchNorm):
            m.__dict__["dvis_plain_class"] = originals[name]  # a plain attribute, not a submodule
    return module


def _plain_batchnorm(sync: torch.nn.SyncBatchNorm) -> torch.nn.Module:
    cls = sync.__dict__.get("dvis_plain_class", torch.nn.BatchNorm2d)
    plain: Any = cls(sync.num_features, sync.eps, sync.momentum, sync.affine, sync.track_running_stats)
    if sync.affine:
        plain.weight = sync.weight  # the same Parameter objects, as convert_sync_batchnorm does
        plain.bias = sync.bias
    plain.running_mean = sync.running_mean
    plain.running_var = sync.running_var
    plain.num_batches_tracked = sync.num_batches_tracked
    plain.train(sync.training)
    if hasattr(sync, "qconfig"):
        plain.qconfig = sync.qconfig
    out: torch.nn.Module = plain
    return out


def from_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`to_sync_batchnorm` in place: each SyncBatchNorm below ``module`` becomes the plain
    BatchNorm it was (BatchNorm2d when unknown), sharing its tensors."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            module.add_module(name, _plain_batchnorm(child))
        else:
            from_sync_batchnorm(child)
    return module
