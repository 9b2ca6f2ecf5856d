"""Pathological label skew: each client holds exactly ``classes_per_client`` classes.

Backed by ``flwr_datasets.partitioner.PathologicalPartitioner`` in its
``"first-deterministic"`` mode (the NIID-Bench paper's #C=k setup): client ``i`` always gets
class ``i % C`` and ``k - 1`` more classes drawn at random without repetition, then each class's
indices are split with ``np.array_split`` among the clients holding it. Deterministic given
its integer seed; an ``idx`` column recovers the original indices.
"""

from __future__ import annotations

import numpy as np

from fedbarrier.errors import UserError
from partitions._checks import (
    check_classes_per_client,
    check_clients_fit,
    check_labels,
    derive_seed,
)
from partitions._hf import LABEL_COLUMN, labels_dataset, partition_indices


def pathological(
    labels: np.ndarray,
    num_clients: int,
    *,
    rng: np.random.Generator,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Give each client examples of exactly ``classes_per_client`` distinct classes.

    Every index is used exactly once when ``num_clients >= C`` (C = classes present). With fewer
    clients some classes may be held by no client: their examples are then dropped, and
    flwr-datasets emits a ``UserWarning`` naming them.

    Returns
    -------
    list of np.ndarray
        One sorted int64 index array per client, pairwise disjoint.

    Raises
    ------
    UserError
        If ``classes_per_client`` is outside ``[1, C]`` or some class would be split over more
        clients than it has examples.
    """
    arr = check_labels(labels)
    check_clients_fit(num_clients, arr.size)
    check_classes_per_client(classes_per_client, int(np.unique(arr).size))
    from flwr_datasets.partitioner import PathologicalPartitioner

    partitioner = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by=LABEL_COLUMN,
        num_classes_per_partition=int(classes_per_client),
        class_assignment_mode="first-deterministic",
        shuffle=False,
        seed=derive_seed(rng),
    )
    try:
        return partition_indices(partitioner, labels_dataset(arr), num_clients)
    except ValueError as err:  # the only one left: a class needed by more clients than it has
        raise UserError(
            f"classes_per_client={classes_per_client} with num_clients={num_clients} assigns "
            "some class to more clients than it has examples; "
            "use fewer clients or fewer classes_per_client"
        ) from err
