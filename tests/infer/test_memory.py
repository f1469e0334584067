"""--max-memory: sizes, and fitting the batch and the readers into a budget."""

from __future__ import annotations

import pytest

from dynamicvis_cli.errors import DvisUsageError
from dynamicvis_cli.infer.memory import MB, measure_activation, parse_size, peak_rss, plan_memory


@pytest.mark.parametrize(
    ("text", "size"),
    [("4G", 4 << 30), ("512M", 512 * MB), ("1.5G", int(1.5 * (1 << 30))), ("2GiB", 2 << 30),
     ("300000000", 300_000_000), ("64k", 64 << 10)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "four", "-1G", "0", "4X"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(DvisUsageError, match="--max-memory"):
        parse_size(text)


def fit(budget_mb: float, *, batch: int = 8, workers: int = 2) -> tuple[int, int]:
    plan = plan_memory(int(budget_mb * MB), process=900 * MB, per_image=100 * MB, tile_bytes=4 * MB,
                       stitcher=50 * MB, batch_size=batch, workers=workers)
    return plan.batch_size, plan.workers


def test_the_batch_shrinks_to_fit_and_never_grows_past_the_request() -> None:
    assert fit(8000) == (8, 2)  # room to spare: what was asked
    small, workers = fit(1700)
    assert 1 <= small < 8 and workers == 2
    # check the arithmetic: fixed + batch * per-image stays within 90 % of the budget
    fixed = 900 + 50 + min(96, 1700 / 20) * 3
    assert fixed + small * (100 + 4 * 5) <= 0.9 * 1700 < fixed + (small + 1) * (100 + 4 * 5)


def test_readers_are_dropped_before_giving_up_and_too_small_a_budget_is_refused() -> None:
    assert fit(1250, workers=2) == (1, 0)  # no room for worker caches: read in-process
    with pytest.raises(DvisUsageError, match=r"--max-memory 1000M is too small.*about 1227M"):
        fit(1000)


def test_measured_activation_sees_a_large_allocation() -> None:
    import numpy as np

    def allocate() -> None:
        block = np.ones(64 * MB, dtype=np.uint8)  # touched, so resident
        assert block[-1] == 1

    grown = measure_activation(allocate)
    assert grown == 0 or 60 * MB <= grown <= 100 * MB  # 0 where /proc cannot be reset
    assert peak_rss()["self"] > 50 * MB
