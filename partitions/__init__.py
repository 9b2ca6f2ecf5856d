"""Data partitioners for federated simulation: who holds which examples.

``partition_labels`` splits a label array across clients under one of ``SCHEMES``;
``split_train_test`` carves each client's local test set; ``partition_stats`` counts what each
client got. All randomness comes from an explicit seed, never the global RNG.
"""

from __future__ import annotations

import numpy as np

from fedbarrier.errors import UserError
from partitions.dirichlet import dirichlet
from partitions.full import full
from partitions.iid import iid
from partitions.pathological import pathological
from partitions.split import split_train_test
from partitions.stats import PartitionStats, partition_stats

SCHEMES = ("iid", "dirichlet", "pathological", "full")

__all__ = [
    "SCHEMES",
    "PartitionStats",
    "dirichlet",
    "full",
    "iid",
    "partition_labels",
    "partition_stats",
    "pathological",
    "split_train_test",
]


def partition_labels(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.1,
    min_partition_size: int = 1,
    classes_per_client: int = 2,
    max_resample: int = 100,
) -> list[np.ndarray]:
    """Return one sorted int64 index array per client into ``labels`` (dispatches on scheme).

    Only the options of the chosen scheme are used and checked: ``alpha``,
    ``min_partition_size`` and ``max_resample`` for ``dirichlet``, ``classes_per_client`` for
    ``pathological``. The same inputs and seed always give identical arrays.

    Raises
    ------
    UserError
        On an unknown scheme or invalid options, with a one-line message.
    """
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return iid(labels, num_clients, rng=rng)
    if scheme == "dirichlet":
        return dirichlet(
            labels,
            num_clients,
            rng=rng,
            alpha=alpha,
            min_partition_size=min_partition_size,
            max_resample=max_resample,
        )
    if scheme == "pathological":
        return pathological(labels, num_clients, rng=rng, classes_per_client=classes_per_client)
    if scheme == "full":
        return full(labels, num_clients)
    raise UserError(f"scheme={scheme!r} is not allowed; must be one of {', '.join(SCHEMES)}")
