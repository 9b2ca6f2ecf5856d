"""IID scheme: exact cover, balanced sizes, determinism."""

import numpy as np

from partitions import iid, partition_labels
from tests.partitions.helpers import assert_exact_cover


def test_iid_covers_every_index_once(labels_2000: np.ndarray) -> None:
    parts = partition_labels(labels_2000, 7, "iid", seed=0)

    assert_exact_cover(parts, 2000)


def test_iid_sizes_are_hand_computed_near_equal_split() -> None:
    labels = np.zeros(10, dtype=np.int64)

    parts = iid(labels, 3, rng=np.random.default_rng(0))

    assert [p.size for p in parts] == [4, 3, 3]  # 10 = 4 + 3 + 3


def test_iid_sizes_differ_by_at_most_one(labels_2000: np.ndarray) -> None:
    parts = partition_labels(labels_2000, 13, "iid", seed=3)

    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_shuffled_not_contiguous(labels_2000: np.ndarray) -> None:
    parts = partition_labels(labels_2000, 4, "iid", seed=0)

    assert not np.array_equal(parts[0], np.arange(500))


def test_iid_same_seed_same_parts_other_seed_differs(labels_2000: np.ndarray) -> None:
    first = partition_labels(labels_2000, 5, "iid", seed=11)
    again = partition_labels(labels_2000, 5, "iid", seed=11)
    other = partition_labels(labels_2000, 5, "iid", seed=12)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_does_not_mutate_labels(labels_2000: np.ndarray) -> None:
    before = labels_2000.copy()

    partition_labels(labels_2000, 5, "iid", seed=0)

    np.testing.assert_array_equal(labels_2000, before)
