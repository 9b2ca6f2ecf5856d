"""Assertions shared by the partition tests."""

import numpy as np


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    """Every index 0..n-1 appears in exactly one part, and each part is sorted int64."""
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)
    assert sum(part.size for part in parts) == n
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
