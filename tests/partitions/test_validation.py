"""One-line UserErrors for bad partition arguments."""

import numpy as np
import pytest

from fedbarrier.errors import UserError
from partitions import SCHEMES, partition_labels, split_train_test

LABELS = np.tile(np.arange(4, dtype=np.int64), 5)  # n = 20


def _message(**kwargs: object) -> str:
    args = {"num_clients": 2, "scheme": "iid", "seed": 0} | kwargs
    with pytest.raises(UserError) as err:
        partition_labels(LABELS, **args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unknown_scheme_lists_allowed_ones() -> None:
    message = _message(scheme="nope")

    assert "'nope'" in message
    assert all(scheme in message for scheme in SCHEMES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_clients_rejected(scheme: str) -> None:
    assert "num_clients=0" in _message(scheme=scheme, num_clients=0)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_more_clients_than_examples_rejected(scheme: str) -> None:
    assert "num_clients=21" in _message(scheme=scheme, num_clients=21)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_alpha_rejected(alpha: float) -> None:
    assert "alpha=" in _message(scheme="dirichlet", alpha=alpha)


def test_negative_min_partition_size_rejected() -> None:
    assert "min_partition_size=-1" in _message(scheme="dirichlet", min_partition_size=-1)


def test_float_labels_rejected() -> None:
    with pytest.raises(UserError, match="labels of shape"):
        partition_labels(np.array([0.0, 1.0]), 1, "iid", seed=0)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_test_fraction_outside_unit_interval_rejected(fraction: float) -> None:
    with pytest.raises(UserError, match=rf"test_fraction={fraction}"):
        split_train_test([np.arange(10)], fraction, seed=0)
