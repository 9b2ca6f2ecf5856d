"""Shared label fixture: a fixed, hand-readable label array (no RNG needed to build it)."""

import numpy as np
import pytest


@pytest.fixture
def labels_2000() -> np.ndarray:
    """10 classes x 200 examples, interleaved 0,1,...,9,0,1,... so class c sits at c, c+10, ..."""
    return np.tile(np.arange(10, dtype=np.int64), 200)
