"""PartitionStats: counts, JSON dict, text table."""

import json

import numpy as np
import pytest

from fedbarrier.errors import UserError
from partitions import partition_stats

LABELS = np.array([0, 1, 1, 2, 2, 2], dtype=np.int64)
TRAIN = [np.array([0, 1]), np.array([3, 4])]
TEST = [np.array([2]), np.array([5])]


def test_stats_counts_are_hand_computed() -> None:
    stats = partition_stats(LABELS, TRAIN, TEST, num_classes=3)

    np.testing.assert_array_equal(stats.train_counts, [[1, 1, 0], [0, 0, 2]])
    np.testing.assert_array_equal(stats.test_counts, [[0, 1, 0], [0, 0, 1]])


def test_stats_counts_sum_to_split_sizes(labels_2000: np.ndarray) -> None:
    train = [np.arange(0, 1500), np.arange(1500, 1900)]
    test = [np.arange(1900, 1950), np.arange(1950, 2000)]

    stats = partition_stats(labels_2000, train, test, num_classes=10)

    assert stats.train_counts.sum(axis=1).tolist() == [1500, 400]
    assert stats.test_counts.sum(axis=1).tolist() == [50, 50]
    assert stats.train_counts.sum() + stats.test_counts.sum() == 2000


def test_stats_arrays_are_read_only() -> None:
    stats = partition_stats(LABELS, TRAIN, TEST, num_classes=3)

    with pytest.raises(ValueError):
        stats.train_counts[0, 0] = 5


def test_stats_to_dict_is_json_ready() -> None:
    stats = partition_stats(LABELS, TRAIN, TEST, num_classes=3)

    data = json.loads(json.dumps(stats.to_dict()))

    assert data == {
        "num_classes": 3,
        "clients": [
            {
                "id": 0,
                "train_size": 2,
                "test_size": 1,
                "train_class_counts": [1, 1, 0],
                "test_class_counts": [0, 1, 0],
            },
            {
                "id": 1,
                "train_size": 2,
                "test_size": 1,
                "train_class_counts": [0, 0, 2],
                "test_class_counts": [0, 0, 1],
            },
        ],
    }


def test_format_table_is_aligned_with_totals_row() -> None:
    stats = partition_stats(LABELS, TRAIN, TEST, num_classes=3)

    table = stats.format_table()

    assert table.splitlines() == [
        "client  train  test  c0  c1  c2",
        "     0      2     1   1   1   0",
        "     1      2     1   0   0   2",
        " total      4     2   1   1   2",
    ]


def test_format_table_elides_middle_classes_beyond_twenty() -> None:
    labels = np.arange(30, dtype=np.int64)

    table = partition_stats(labels, [np.arange(30)], [np.arange(0)], 30).format_table()

    header = table.splitlines()[0].split()
    assert header == [
        "client",
        "train",
        "test",
        *[f"c{c}" for c in range(10)],
        "...",
        *[f"c{c}" for c in range(21, 30)],
    ]
    assert table.splitlines()[-1].split()[:3] == ["total", "30", "0"]


def test_stats_label_beyond_num_classes_raises() -> None:
    with pytest.raises(UserError, match="num_classes=2"):
        partition_stats(LABELS, TRAIN, TEST, num_classes=2)
