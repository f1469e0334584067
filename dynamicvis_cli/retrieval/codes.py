"""Float embeddings → packed binary codes, and Hamming distances between codes.

Two methods, as the DynamicVis paper uses them for zero-shot retrieval:

- ``sign``: one bit per embedding dimension, ``bit = value > 0`` (768 bits for DynamicVis-B).
- ``hash`` ("trivial hashing"): the dimensions are cut into ``bits`` contiguous groups, each group
  is averaged, and the averages are signed: a short code (e.g. 64 bits) from any embedding. When
  ``bits`` does not divide the dimension, group sizes differ by one (``numpy.array_split``).

Codes are packed eight bits to a byte (``numpy.packbits``, most significant bit first), the layout
FAISS binary indexes take; a code of ``bits`` bits is ``bits // 8`` bytes, so ``bits`` must be a
multiple of 8. Hamming distance does not depend on the bit order, only on using one order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dynamicvis_cli.errors import DvisUsageError

METHODS = ("sign", "hash")


@dataclass(frozen=True)
class CodeSpec:
    """How an archive's codes were made; stored with the index.

    Attributes:
        method: ``sign`` or ``hash``.
        bits: code length in bits (a multiple of 8).
        dim: length of the float embeddings the codes come from.
    """

    method: str
    bits: int
    dim: int

    @property
    def nbytes(self) -> int:
        """Bytes per packed code."""
        return self.bits // 8

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "bits": self.bits, "dim": self.dim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeSpec:
        return cls(str(d["method"]), int(d["bits"]), int(d["dim"]))


def code_spec(method: str, dim: int, bits: int | None = None) -> CodeSpec:
    """Validate a method and length for embeddings of ``dim`` dimensions.

    Args:
        method: ``sign`` (bits must be None or ``dim``) or ``hash`` (bits ≤ ``dim``).
        dim: embedding length.
        bits: code length; None means ``dim`` (sign) or 64 (hash).

    Raises:
        DvisUsageError: unknown method, or a length that is not a multiple of 8 or does not fit.
    """
    if method not in METHODS:
        raise DvisUsageError(f"unknown code method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "sign":
        if bits is not None and bits != dim:
            raise DvisUsageError(
                f"--bits {bits}: sign codes have one bit per embedding dimension ({dim}); "
                "use --code hash for another length"
            )
        bits = dim
    elif bits is None:
        bits = min(64, dim)
    if bits < 8 or bits % 8:
        raise DvisUsageError(f"--bits {bits}: binary codes must be a positive multiple of 8 bits")
    if bits > dim:
        raise DvisUsageError(f"--bits {bits}: more bits than the embedding has dimensions ({dim})")
    return CodeSpec(method, bits, dim)


def _as_matrix(embeddings: ArrayLike) -> NDArray[np.float32]:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise DvisUsageError(f"embeddings must be a (count, dim) matrix, got shape {x.shape}")
    return x


def binarise(embeddings: ArrayLike) -> NDArray[np.uint8]:
    """Sign codes: (N, D) floats → (N, D / 8) packed bytes, bit = value > 0.

    Raises:
        DvisUsageError: D is not a multiple of 8.
    """
    x = _as_matrix(embeddings)
    if x.shape[1] % 8:
        raise DvisUsageError(f"sign codes need a dimension divisible by 8, got {x.shape[1]}")
    return np.packbits(x > 0, axis=1)


def group_means(embeddings: ArrayLike, groups: int) -> NDArray[np.float32]:
    """(N, D) → (N, groups): the mean of each of ``groups`` contiguous runs of dimensions."""
    x = _as_matrix(embeddings)
    if not 1 <= groups <= x.shape[1]:
        raise DvisUsageError(f"cannot cut {x.shape[1]} dimensions into {groups} groups")
    sizes = np.array([len(part) for part in np.array_split(np.arange(x.shape[1]), groups)])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sums = np.add.reduceat(x.astype(np.float64), starts, axis=1)
    out: NDArray[np.float32] = (sums / sizes).astype(np.float32)
    return out


def trivial_hash(embeddings: ArrayLike, bits: int) -> NDArray[np.uint8]:
    """Trivial hashing: average ``bits`` contiguous groups of dimensions, then sign; packed."""
    return binarise(group_means(embeddings, bits))


def encode(embeddings: ArrayLike, spec: CodeSpec) -> NDArray[np.uint8]:
    """Embeddings (N, spec.dim) → packed codes (N, spec.nbytes) by ``spec.method``.

    Raises:
        DvisUsageError: the embeddings' length is not ``spec.dim``.
    """
    x = _as_matrix(embeddings)
    if x.shape[1] != spec.dim:
        raise DvisUsageError(
            f"embeddings have {x.shape[1]} dimensions but the codes are made from {spec.dim}"
        )
    if spec.method == "sign":
        return binarise(x)
    return trivial_hash(x, spec.bits)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(codes: NDArray[np.uint8]) -> NDArray[np.int64]:
    """Number of set bits per row of packed ``codes`` (N, B) → (N,)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        out: NDArray[np.int64] = np.bitwise_count(codes).sum(axis=-1, dtype=np.int64)
    else:
        out = _POPCOUNT[codes].sum(axis=-1, dtype=np.int64)
    return out


def hamming(queries: ArrayLike, codes: ArrayLike) -> NDArray[np.int64]:
    """All Hamming distances: (Q, B) and (N, B) packed codes → (Q, N) int64."""
    q = np.asarray(queries, dtype=np.uint8)
    c = np.asarray(codes, dtype=np.uint8)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise DvisUsageError(f"codes of different lengths: {q.shape} vs {c.shape}")
    out = np.empty((q.shape[0], c.shape[0]), dtype=np.int64)
    for i in range(q.shape[0]):  # row by row: memory stays O(N·B), not O(Q·N·B)
        out[i] = popcount(np.bitwise_xor(c, q[i]))
    return out
