"""Pathological scheme (flwr-datasets backed): exactly k classes per client."""

import numpy as np
import pytest

from fedbarrier.errors import UserError
from partitions import partition_labels, pathological
from tests.partitions.helpers import assert_exact_cover


def test_pathological_k1_gives_client_i_all_of_class_i() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 2], dtype=np.int64)

    parts = pathological(labels, 3, rng=np.random.default_rng(0), classes_per_client=1)

    expected = [np.array([0, 3]), np.array([1, 4]), np.array([2, 5, 6])]
    for part, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(part, want)


def test_pathological_all_classes_split_in_client_order() -> None:
    labels = np.tile(np.arange(3, dtype=np.int64), 3)  # class c at c, c+3, c+6

    parts = pathological(labels, 3, rng=np.random.default_rng(0), classes_per_client=3)

    expected = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([6, 7, 8])]
    for part, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(part, want)


def test_pathological_exactly_k_classes_and_exact_cover(labels_2000: np.ndarray) -> None:
    parts = partition_labels(labels_2000, 10, "pathological", seed=0, classes_per_client=2)

    assert [np.unique(labels_2000[p]).size for p in parts] == [2] * 10
    assert_exact_cover(parts, 2000)


def test_pathological_same_seed_same_parts_other_seed_differs(labels_2000: np.ndarray) -> None:
    first = partition_labels(labels_2000, 10, "pathological", seed=1, classes_per_client=3)
    again = partition_labels(labels_2000, 10, "pathological", seed=1, classes_per_client=3)
    other = partition_labels(labels_2000, 10, "pathological", seed=2, classes_per_client=3)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("k", [0, 11])
def test_pathological_k_out_of_range_raises(labels_2000: np.ndarray, k: int) -> None:
    with pytest.raises(UserError, match=rf"classes_per_client={k} .*between 1 and 10"):
        partition_labels(labels_2000, 10, "pathological", seed=0, classes_per_client=k)


def test_pathological_class_on_more_clients_than_examples_raises() -> None:
    labels = np.array([0, 1, 1, 1], dtype=np.int64)  # class 0 has one example, 4 clients want it

    with pytest.raises(UserError, match="more clients than it has examples"):
        partition_labels(labels, 4, "pathological", seed=0, classes_per_client=2)
