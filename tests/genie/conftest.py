"""Shared set-up for the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny ops on a shared two-core machine: intra-op threads only add contention (measured ~5x
    slower with several threads), so each test module runs single-threaded and restores the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
