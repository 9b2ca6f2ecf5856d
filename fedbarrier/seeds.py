"""Every random stream of a run, named in one place.

All randomness is derived from the run's ``seed`` with :func:`derive_seed`, so the same config
gives the same numbers in any process, and a resumed run draws what an uninterrupted one would.
A stream is ``derive_seed(seed, Stream.X, *parts)``; its parts are listed beside each name.

Three legacy shapes come from fedbarrier 0.1 and are kept because every committed record was made
with them, each behind a function below: local training draws from ``(seed, client, round)``,
the per-round client sampling from ``(seed, round, phase)`` and the default clients of
``barriers.max_defaults`` from ``(seed, round, 7)``, without a stream id. They can coincide with
a stream below (client 3's training in round 1 draws the seed of the test sample
``(seed, 3, 1)``); the numbers drawn from such seeds are used for unrelated things (a data order
vs. which images are measured), so no result depends on the coincidence, but new streams must
use a :class:`Stream` id.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """Stream ids: the second part of ``derive_seed(seed, stream, ...)``."""

    PARTITION = 1  # (): the clients' partition of the training set
    SPLIT = 2  # (): each client's local train/test split
    BARRIER_SAMPLE = 3  # (0 = train, 1 = test): the server's barrier sample
    INIT = 5  # ([client]): model initialization (per client with train.client_init = "own")
    LAYER_ORDERS = 11  # (): the random layer orders of cumulative barriers
    ROBUSTNESS = 13  # (index, draw): `analyze robustness` directions
    SUBSPACE = 17  # (..., draw, kind): `analyze subspace` noise
    SUBSET = 29  # (0 = train, 1 = test): data.train_size / data.test_size subsets
    LOCAL_SAMPLE = 23  # (client, 0 = local-train, 1 = local-test): a client's local barrier sample
    ALIGNMENT = 31  # (round): the order in which weight matching visits the permutations
    AUGMENT = 37  # (): drawn after a client's training seed: its batches' crops and flips


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, stream, client, round...), stable across processes."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def training_seed(seed: int, client: int, server_round: int) -> int:
    """The data order of ``client``'s local training in ``server_round`` (legacy shape)."""
    return derive_seed(seed, client, server_round)


def sampling_seed(seed: int, server_round: int, phase: int) -> int:
    """Python's ``random`` seed for Flower's client sampling (phase 0 train, 1 evaluate;
    legacy shape)."""
    return derive_seed(seed, server_round, phase)


def default_clients_seed(seed: int, server_round: int) -> int:
    """The draw of the round's default clients (``barriers.max_defaults``; legacy shape)."""
    return derive_seed(seed, server_round, 7)
