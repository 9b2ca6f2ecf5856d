"""Local train/test split: sizes, disjointness, determinism."""

import numpy as np

from partitions import split_train_test


def test_split_sizes_round_test_part_down() -> None:
    indices = [np.arange(10), np.arange(100, 107), np.arange(200, 300)]

    train, test = split_train_test(indices, 0.25, seed=0)

    # floor(2.5) = 2, floor(1.75) = 1, floor(25.0) = 25
    assert [t.size for t in test] == [2, 1, 25]
    assert [t.size for t in train] == [8, 6, 75]


def test_split_uses_decimal_fraction_not_binary_float() -> None:
    train, test = split_train_test([np.arange(100)], 0.29, seed=0)  # 0.29 * 100 == 28.999...

    assert test[0].size == 29
    assert train[0].size == 71


def test_split_parts_are_disjoint_sorted_and_cover_the_client() -> None:
    indices = [np.array([5, 9, 2, 7, 11, 3])]

    train, test = split_train_test(indices, 0.5, seed=4)

    assert np.intersect1d(train[0], test[0]).size == 0
    np.testing.assert_array_equal(np.union1d(train[0], test[0]), [2, 3, 5, 7, 9, 11])
    assert np.all(np.diff(train[0]) > 0) and np.all(np.diff(test[0]) > 0)


def test_split_zero_fraction_keeps_everything_for_training() -> None:
    train, test = split_train_test([np.array([4, 1, 3])], 0.0, seed=0)

    np.testing.assert_array_equal(train[0], [1, 3, 4])
    assert test[0].size == 0 and test[0].dtype == np.int64


def test_split_same_seed_same_split_other_seed_differs() -> None:
    indices = [np.arange(50), np.arange(50, 90)]

    first = split_train_test(indices, 0.3, seed=1)
    again = split_train_test(indices, 0.3, seed=1)
    other = split_train_test(indices, 0.3, seed=2)

    assert all(np.array_equal(a, b) for a, b in zip(first[1], again[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first[1], other[1], strict=True))


def test_split_clients_with_same_indices_get_different_test_sets() -> None:
    train, test = split_train_test([np.arange(40), np.arange(40)], 0.25, seed=0)

    assert not np.array_equal(test[0], test[1])


def test_split_does_not_mutate_input() -> None:
    indices = [np.array([3, 1, 2, 0])]

    split_train_test(indices, 0.5, seed=0)

    np.testing.assert_array_equal(indices[0], [3, 1, 2, 0])
