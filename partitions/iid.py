"""IID partition: every client gets a uniformly random, near-equal share of the examples."""

from __future__ import annotations

import numpy as np

from partitions._checks import check_clients_fit, check_labels


def iid(labels: np.ndarray, num_clients: int, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all indices with ``rng`` and cut them into ``num_clients`` near-equal parts.

    Plain numpy rather than flwr-datasets' ``IidPartitioner``: that one shards contiguously
    without shuffling, so it would need the same permutation anyway. ``np.array_split`` makes
    sizes differ by at most one (the first ``n % num_clients`` clients get the extra example).

    Returns
    -------
    list of np.ndarray
        One sorted int64 index array into ``labels`` per client; together they cover every
        index exactly once.
    """
    arr = check_labels(labels)
    check_clients_fit(num_clients, arr.size)
    order = rng.permutation(arr.size)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]
