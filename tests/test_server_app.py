"""The ServerApp's checks of what it is asked to do under the Deployment Engine."""

from __future__ import annotations

import pytest

from fedbarrier.config import load_config
from fedbarrier.fl.server_app import server_data_warning


class DeployedGrid:  # Flower's HTTP grid: no in-process message queue to poll
    pass


class SimulatedGrid:  # Flower's in-memory grid
    pull_interval = 0.1


@pytest.mark.parametrize("grid, overrides, warns", [
    (DeployedGrid(), [], True),  # the default measures on both splits
    (DeployedGrid(), ['barriers.splits=["test"]'], False),
    (DeployedGrid(), ["barriers.enabled=false"], False),
    (SimulatedGrid(), [], False),
])
def test_train_split_barriers_under_deployment_are_flagged(grid, overrides, warns):
    warning = server_data_warning(load_config(None, overrides), grid)
    assert (warning is not None) == warns
    if warns:
        assert 'barriers.splits = ["test"]' in warning and "\n" not in warning


def test_the_warning_names_the_barrier_aware_split_too():
    cfg = load_config(None, ["strategy.name=barrier-aware"])
    assert 'strategy.barrier_split = "test"' in server_data_warning(cfg, DeployedGrid())
