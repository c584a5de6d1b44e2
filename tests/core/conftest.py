"""Fixtures of the core tests."""

from __future__ import annotations

import numpy as np
import pytest
from core_data import blobs


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    return blobs(24, 2, 2)


@pytest.fixture
def three_class_data() -> tuple[np.ndarray, np.ndarray]:
    return blobs(30, 2, 3)
