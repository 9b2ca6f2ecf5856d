"""Dirichlet scheme (flwr-datasets backed): cover, skew vs. alpha, determinism, min size."""

import numpy as np
import pytest

from fedbarrier.errors import UserError
from partitions import dirichlet, partition_labels
from tests.partitions.helpers import assert_exact_cover


def _class_counts(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.bincount(labels[p], minlength=10) for p in parts])


def test_dirichlet_covers_every_index_once(labels_2000: np.ndarray) -> None:
    parts = partition_labels(labels_2000, 10, "dirichlet", seed=0, alpha=0.5)

    assert_exact_cover(parts, 2000)


def test_dirichlet_small_alpha_leaves_classes_absent(labels_2000: np.ndarray) -> None:
    parts = partition_labels(labels_2000, 10, "dirichlet", seed=0, alpha=0.1)

    counts = _class_counts(labels_2000, parts)
    assert (counts == 0).any(axis=1).sum() >= 5  # most clients miss some class entirely


def test_dirichlet_large_alpha_is_near_uniform(labels_2000: np.ndarray) -> None:
    # Tolerance 0.15 on each class share (uniform = 0.10): across 40 seeds alpha=12 never
    # deviated more than 0.105, while alpha=1 always deviated more than 0.20.
    parts = partition_labels(labels_2000, 10, "dirichlet", seed=0, alpha=12.0)

    counts = _class_counts(labels_2000, parts)
    shares = counts / counts.sum(axis=1, keepdims=True)
    assert np.abs(shares - 0.1).max() < 0.15


def test_dirichlet_moderate_alpha_fails_the_uniformity_tolerance(labels_2000: np.ndarray) -> None:
    parts = partition_labels(labels_2000, 10, "dirichlet", seed=0, alpha=1.0)

    counts = _class_counts(labels_2000, parts)
    shares = counts / counts.sum(axis=1, keepdims=True)
    assert np.abs(shares - 0.1).max() >= 0.15


def test_dirichlet_same_seed_same_parts_other_seed_differs(labels_2000: np.ndarray) -> None:
    first = partition_labels(labels_2000, 10, "dirichlet", seed=5, alpha=0.3)
    again = partition_labels(labels_2000, 10, "dirichlet", seed=5, alpha=0.3)
    other = partition_labels(labels_2000, 10, "dirichlet", seed=6, alpha=0.3)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_meets_min_partition_size(labels_2000: np.ndarray) -> None:
    rng = np.random.default_rng(0)

    parts = dirichlet(labels_2000, 10, rng=rng, alpha=0.5, min_partition_size=100)

    assert min(p.size for p in parts) >= 100


def test_dirichlet_unreachable_min_size_raises_after_max_resample(labels_2000: np.ndarray) -> None:
    # 10 clients each needing >= 190 of 2000 examples is near-perfect balance: alpha=0.1 never
    # draws that, so every one of the 3 draws fails.
    with pytest.raises(UserError, match=r"min_partition_size.*larger alpha") as err:
        partition_labels(
            labels_2000,
            10,
            "dirichlet",
            seed=0,
            alpha=0.1,
            min_partition_size=190,
            max_resample=3,
        )

    assert "alpha=0.1, num_clients=10, n=2000" in str(err.value)
    assert "\n" not in str(err.value)


def test_dirichlet_arithmetically_impossible_min_size_raises_at_once() -> None:
    labels = np.tile(np.arange(2, dtype=np.int64), 10)  # n = 20

    with pytest.raises(UserError, match="minimum partition size 5 cannot be met"):
        partition_labels(labels, 5, "dirichlet", seed=0, alpha=100.0, min_partition_size=5)
