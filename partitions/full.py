"""Full "partition": every client holds the whole dataset (centralised two-model experiments)."""

from __future__ import annotations

import numpy as np

from partitions._checks import check_labels, check_num_clients


def full(labels: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Give each client every index of ``labels``.

    Nothing is random, so no generator is taken. Each client gets its own array so that a
    caller editing one client's indices cannot silently change another's. More clients than
    examples is allowed here, since no client ends up empty.
    """
    arr = check_labels(labels)
    check_num_clients(num_clients)
    return [np.arange(arr.size, dtype=np.int64) for _ in range(num_clients)]
