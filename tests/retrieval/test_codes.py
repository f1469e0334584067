"""Sign codes, trivial hashing and Hamming distances against plain-loop references."""

from __future__ import annotations

import numpy as np
import pytest

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.retrieval.codes import (
    binarise,
    code_spec,
    encode,
    group_means,
    hamming,
    trivial_hash,
)


def bits_of(code: np.ndarray) -> list[int]:
    return [(int(byte) >> (7 - j)) & 1 for byte in code for j in range(8)]


def test_sign_codes_have_one_bit_per_dimension() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 24)).astype(np.float32)
    x[0, 3] = 0.0  # zero is not positive
    codes = binarise(x)
    assert codes.shape == (5, 3) and codes.dtype == np.uint8
    for row, code in zip(x, codes):
        assert bits_of(code) == [int(v > 0) for v in row]


@pytest.mark.parametrize(("dim", "bits"), [(64, 8), (768, 64), (100, 16)])
def test_trivial_hash_averages_contiguous_groups_then_signs(dim: int, bits: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, dim)).astype(np.float32)
    groups = np.array_split(np.arange(dim), bits)
    expected_means = np.array([[row[g].astype(np.float64).mean() for g in groups] for row in x])
    np.testing.assert_allclose(group_means(x, bits), expected_means, rtol=1e-6, atol=1e-7)
    for row, code in zip(x, trivial_hash(x, bits)):
        assert bits_of(code) == [int(row[g].astype(np.float64).mean() > 0) for g in groups]


def test_hamming_matches_a_loop() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (3, 12), dtype=np.uint8)
    b = rng.integers(0, 256, (7, 12), dtype=np.uint8)
    expected = [[sum(x != y for x, y in zip(bits_of(p), bits_of(q))) for q in b] for p in a]
    assert hamming(a, b).tolist() == expected


def test_code_spec_checks_method_and_length() -> None:
    assert code_spec("sign", 768).bits == 768
    assert code_spec("hash", 768).bits == 64
    assert code_spec("hash", 768, 32).nbytes == 4
    for method, bits in (("sign", 64), ("hash", 12), ("hash", 1024), ("pca", None)):
        with pytest.raises(DvisUsageError):
            code_spec(method, 768, bits)
    with pytest.raises(DvisUsageError, match="dimensions"):
        encode(np.zeros((1, 32)), code_spec("hash", 64, 16))
