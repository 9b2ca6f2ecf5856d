"""Dirichlet label-skew partition (per class, client shares drawn from Dirichlet(alpha)).

Backed by ``flwr_datasets.partitioner.DirichletPartitioner``, which for each class in sorted
order draws shares ``p ~ Dirichlet(alpha * ones(num_clients))`` from ``default_rng(seed)``
and cuts that class's indices (in dataset order) at ``floor(cumsum(p) * n_class)``. It is
deterministic given its integer seed, and an ``idx`` column recovers the original indices.

Its own resampling for ``min_partition_size`` is not used: it is hard-wired to 11 draws, warns
on every failed draw and raises a bare ``ValueError``. Instead it is asked for one draw
(``min_partition_size=0``) per attempt, with a fresh seed from our generator each time, so
``max_resample`` is honoured and the failure is a one-line ``UserError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedbarrier.errors import UserError
from partitions._checks import (
    check_alpha,
    check_clients_fit,
    check_labels,
    check_max_resample,
    check_min_partition_size,
    derive_seed,
)
from partitions._hf import LABEL_COLUMN, labels_dataset, partition_indices

if TYPE_CHECKING:
    import datasets


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    *,
    rng: np.random.Generator,
    alpha: float = 0.1,
    min_partition_size: int = 1,
    max_resample: int = 100,
) -> list[np.ndarray]:
    """Split ``labels`` across clients with per-class Dirichlet(``alpha``) shares.

    Small ``alpha`` (0.1) gives strong label skew, with many classes absent on a client; large
    ``alpha`` (10+) approaches IID. The draw is repeated, up to ``max_resample`` times, until
    every client holds at least ``min_partition_size`` examples.

    Returns
    -------
    list of np.ndarray
        One sorted int64 index array per client; together they cover every index exactly once.

    Raises
    ------
    UserError
        On invalid arguments, or when no draw meets ``min_partition_size``.
    """
    arr = check_labels(labels)
    check_clients_fit(num_clients, arr.size)
    check_alpha(alpha)
    check_min_partition_size(min_partition_size)
    check_max_resample(max_resample)
    if min_partition_size * num_clients > arr.size:
        raise _unmet(min_partition_size, alpha, num_clients, arr.size, "it exceeds n/num_clients")
    dataset = labels_dataset(arr)
    for _ in range(max_resample):
        parts = _draw(dataset, num_clients, alpha, derive_seed(rng))
        if min(part.size for part in parts) >= min_partition_size:
            return parts
    raise _unmet(min_partition_size, alpha, num_clients, arr.size, f"after {max_resample} draws")


def _draw(dataset: datasets.Dataset, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Make one flwr-datasets Dirichlet draw; no shuffle, as the indices get sorted anyway."""
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by=LABEL_COLUMN,
        alpha=float(alpha),  # it only accepts int/float/list/ndarray, not e.g. np.float32
        min_partition_size=0,
        self_balancing=False,
        shuffle=False,
        seed=seed,
    )
    return partition_indices(partitioner, dataset, num_clients)


def _unmet(min_size: int, alpha: float, num_clients: int, n: int, why: str) -> UserError:
    """Build the one-line error for a minimum partition size no draw can meet."""
    return UserError(
        f"minimum partition size {min_size} cannot be met with alpha={alpha}, "
        f"num_clients={num_clients}, n={n} ({why}); "
        "use a lower min_partition_size or a larger alpha"
    )
