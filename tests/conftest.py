"""Shared, tiny, seeded fixtures (grids of 16-64 points, a few parameters)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Seed 1234 for every test; each test that needs its own RNG states its seed explicitly.
    torch.manual_seed(1234)
    yield
