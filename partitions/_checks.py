"""Input checks shared by the partitioners.

Each check raises :class:`~fedbarrier.errors.UserError` with a one-line message naming the bad
value and what is allowed, because every value checked here comes from a user's config.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fedbarrier.errors import UserError


def _is_int(value: object) -> bool:
    """Tell integers from bools, which are ints to Python but never a valid count here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as an array after checking it holds 1-D non-negative integer class ids.

    Empty labels are refused too: no scheme can give a client anything from them.

    The partitioners index and bincount the labels, which only makes sense for class ids.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise UserError(
            f"labels of shape {arr.shape} and dtype {arr.dtype} are not allowed; "
            "must be a 1-D array of integer class ids"
        )
    if arr.size == 0:
        raise UserError("labels is empty; need at least one example to partition")
    if int(arr.min()) < 0:
        raise UserError(f"label {int(arr.min())} is not allowed; class ids must be >= 0")
    return arr


def check_num_clients(num_clients: int) -> None:
    """Require at least one client."""
    if not _is_int(num_clients) or num_clients < 1:
        raise UserError(f"num_clients={num_clients!r} is not allowed; must be an integer >= 1")


def check_clients_fit(num_clients: int, num_examples: int) -> None:
    """Require no more clients than examples, so that a disjoint split leaves no client empty."""
    check_num_clients(num_clients)
    if num_clients > num_examples:
        raise UserError(
            f"num_clients={num_clients} is more than the {num_examples} examples available; "
            f"use at most {num_examples} clients"
        )


def check_alpha(alpha: float) -> None:
    """Require a finite positive Dirichlet concentration; the distribution needs one."""
    ok = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool | np.bool_)
    if not ok or not math.isfinite(alpha) or alpha <= 0:
        raise UserError(f"alpha={alpha!r} is not allowed; must be a finite number > 0")


def check_min_partition_size(min_partition_size: int) -> None:
    """Require a non-negative integer minimum number of examples per client."""
    if not _is_int(min_partition_size) or min_partition_size < 0:
        raise UserError(
            f"min_partition_size={min_partition_size!r} is not allowed; must be an integer >= 0"
        )


def check_max_resample(max_resample: int) -> None:
    """Require at least one Dirichlet draw."""
    if not _is_int(max_resample) or max_resample < 1:
        raise UserError(f"max_resample={max_resample!r} is not allowed; must be an integer >= 1")


def check_classes_per_client(classes_per_client: int, num_present: int) -> None:
    """Require ``1 <= k <= C`` with C the classes present; a client cannot hold absent classes."""
    k = classes_per_client
    if not _is_int(k) or not 1 <= k <= num_present:
        raise UserError(
            f"classes_per_client={k!r} is not allowed; must be an integer between 1 and "
            f"{num_present} (the number of classes present in the labels)"
        )


def check_test_fraction(test_fraction: float) -> None:
    """Require ``0 <= test_fraction < 1`` so every client keeps some training data."""
    ok = isinstance(test_fraction, numbers.Real) and not isinstance(test_fraction, bool | np.bool_)
    if not ok or not 0 <= test_fraction < 1:
        raise UserError(
            f"test_fraction={test_fraction!r} is not allowed; must be a number in [0, 1)"
        )


def derive_seed(rng: np.random.Generator) -> int:
    """Draw an integer seed from ``rng`` for libraries that take a seed, not a Generator."""
    return int(rng.integers(0, 2**32))
