"""Training tests run torch on one thread: on a shared 2-core machine OpenMP threads that spin
against other processes make a step many times slower, and results do not depend on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
