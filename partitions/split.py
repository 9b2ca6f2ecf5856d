"""Per-client local train/test split."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from partitions._checks import check_test_fraction


def split_train_test(
    indices: list[np.ndarray], test_fraction: float, *, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each client's indices into (local train, local test) by a seeded shuffle.

    Client ``k`` shuffles with ``default_rng([seed, k])``, so its split depends only on its own
    indices, the seed and its id, not on the other clients. Its test part has
    ``floor(test_fraction * n_k)`` examples, rounding down so that a client never loses more
    than the asked fraction to testing; ``test_fraction`` is taken at its decimal value (0.29 of
    100 gives 29, not the 28 that binary floating point would).

    Returns
    -------
    tuple of (list of np.ndarray, list of np.ndarray)
        Per-client sorted int64 train indices and test indices, disjoint within each client.
    """
    check_test_fraction(test_fraction)
    fraction = Fraction(repr(float(test_fraction)))
    train, test = [], []
    for client, client_indices in enumerate(indices):
        tr, te = _split_one(np.asarray(client_indices, dtype=np.int64), fraction, [seed, client])
        train.append(tr)
        test.append(te)
    return train, test


def _split_one(
    indices: np.ndarray, fraction: Fraction, seed: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle one client's indices and cut off the first ``floor(fraction * n)`` as test."""
    num_test = math.floor(fraction * indices.size)
    shuffled = np.random.default_rng(seed).permutation(indices)
    return np.sort(shuffled[num_test:]), np.sort(shuffled[:num_test])
