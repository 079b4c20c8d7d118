"""Shared fixtures; the tiny models themselves live in tests/tiny.py."""

import pytest
import torch

from .tiny import SIZE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE)
