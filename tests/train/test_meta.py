"""Meta-embedding MIL-NCE: the vectorised loss against a loop reference, and the cross-rank gather:
two gloo processes with half the regions each give the loss and gradients of one process with all
of them — and would not without the gather."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dynamicvis_cli.train.meta import MetaEmbeddingLoss, load_embeddings, mil_nce


def mil_nce_reference(sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    losses = []
    present = sorted(set(labels.tolist()))
    for c in present:
        pos = sum(math.exp(sim[i, c]) for i in range(len(labels)) if labels[i] == c)
        neg = sum(math.exp(sim[i, c]) for i in range(len(labels)) if labels[i] != c)
        neg += sum(math.exp(sim[i, k]) for i in range(len(labels)) if labels[i] == c for k in present if k != c)
        losses.append(-math.log(pos / (pos + neg)))
    return torch.tensor(sum(losses) / len(losses), dtype=torch.float64)


@pytest.mark.parametrize("labels", [[0, 0, 1, 2, 2, 2], [3, 3], [1, 0, 1, 0]])
def test_mil_nce_matches_the_loop_reference(labels: list[int]) -> None:
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(len(labels), 5, generator=g, dtype=torch.float64) * 3
    y = torch.tensor(labels)
    torch.testing.assert_close(mil_nce(sim, y), mil_nce_reference(sim, y), rtol=1e-9, atol=1e-9)


def _setup(seed: int = 0) -> tuple[torch.nn.Linear, MetaEmbeddingLoss, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear 'trunk' (region inputs → 8-d features), a classifier and the loss, fixed inputs."""
    torch.manual_seed(seed)
    trunk = torch.nn.Linear(6, 8)
    loss = MetaEmbeddingLoss(8, ["a", "b", "c", "d"], ce_weight=0.5)
    classifier = torch.nn.Linear(8, 4)
    x = torch.randn(10, 6)
    labels = torch.tensor([0, 1, 1, 2, 0, 3, 3, 1, 2, 0])
    return trunk, loss, classifier, x, labels  # type: ignore[return-value]


def _grads(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()}


def _rank(rank: int, world: int, init: str, out: str, gather: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        trunk, loss, classifier, x, labels = _setup()
        part = slice(0, 4) if rank == 0 else slice(4, 10)  # uneven shares: 4 and 6 regions
        feats = trunk(x[part])
        result = loss(feats, classifier(feats), labels[part], gather=gather)
        result["loss"].backward()
        grads = _grads(trunk, loss, classifier)
        for g in grads.values():  # what DDP does: average the gradients over the ranks
            dist.all_reduce(g)
            g /= world
        torch.save({"loss": result["loss"].detach(), "grads": grads}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp_path: Path, gather: bool) -> list[dict]:
    out = str(tmp_path / f"r{int(gather)}")
    init = f"file://{tmp_path}/pg{int(gather)}"
    mp.start_processes(_rank, args=(2, init, out, gather), nprocs=2, start_method="spawn")
    return [torch.load(f"{out}.{r}") for r in range(2)]


def test_two_ranks_with_gather_equal_one_process(tmp_path: Path) -> None:
    trunk, loss, classifier, x, labels = _setup()
    feats = trunk(x)
    one = loss(feats, classifier(feats), labels)
    one["loss"].backward()
    ref = _grads(trunk, loss, classifier)

    ranks = _two_ranks(tmp_path, gather=True)
    for r in ranks:
        torch.testing.assert_close(r["loss"], one["loss"].detach(), rtol=1e-5, atol=1e-6)
        for k, g in ref.items():
            torch.testing.assert_close(r["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)

    # the same without the gather: each rank sees only its own regions — a different loss
    alone = _two_ranks(tmp_path, gather=False)
    assert not torch.allclose(alone[0]["loss"], one["loss"].detach(), rtol=1e-3)
    assert any(not torch.allclose(alone[0]["grads"][k], g, rtol=1e-3, atol=1e-5) for k, g in ref.items())


def test_embedding_files(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from dynamicvis_cli.errors import DatasetError

    vecs = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_file({"ship": vecs[0], "harbor": vecs[1], "plane": vecs[2]}, str(tmp_path / "e.safetensors"))
    got = load_embeddings(str(tmp_path / "e.safetensors"), ["plane", "ship"])
    assert got.tolist() == [vecs[2].tolist(), vecs[0].tolist()]
    np.save(tmp_path / "e.npy", vecs)
    (tmp_path / "e.txt").write_text("ship\nharbor\nplane\n")
    assert load_embeddings(str(tmp_path / "e.npy"), ["harbor"]).tolist() == [vecs[1].tolist()]
    with pytest.raises(DatasetError, match="no embedding for category vehicle"):
        load_embeddings(str(tmp_path / "e.npy"), ["ship", "vehicle"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(DatasetError, match="cannot read embeddings"):
        load_embeddings(str(tmp_path / "bad.safetensors"), ["ship"])
    # text-embedding width differs from the region vectors: a projection is learnt
    m = MetaEmbeddingLoss(8, ["plane", "ship"], init=got)
    assert isinstance(m.proj, torch.nn.Linear) and m.similarity(torch.randn(3, 8)).shape == (3, 2)
