"""Full scheme: every client holds every index."""

import numpy as np

from partitions import partition_labels


def test_full_gives_every_client_everything() -> None:
    labels = np.array([3, 1, 2], dtype=np.int64)

    parts = partition_labels(labels, 4, "full", seed=0)

    assert len(parts) == 4
    for part in parts:
        np.testing.assert_array_equal(part, np.array([0, 1, 2]))
        assert part.dtype == np.int64


def test_full_clients_do_not_share_one_array() -> None:
    parts = partition_labels(np.zeros(3, dtype=np.int64), 2, "full", seed=0)

    parts[0][0] = 99

    assert parts[1][0] == 0
