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


class NodesGrid:
    """A grid whose node count follows ``counts`` (one entry a poll, the last one stays) and
    whose clients answer the partition query; ``simulated`` adds the in-memory grid's mark."""

    def __init__(self, counts, simulated):
        self.counts, self.polls = list(counts), 0
        if simulated:
            self.pull_interval = 0.0

    def get_node_ids(self):
        count = self.counts[min(self.polls, len(self.counts) - 1)]
        self.polls += 1
        return list(range(100, 100 + count))

    def send_and_receive(self, messages, timeout=None):
        from types import SimpleNamespace

        self.queried = [m.metadata.dst_node_id for m in messages]
        from fedbarrier.fl.protocol import CLIENT_RECORD, PARTITION_ID
        return [SimpleNamespace(has_error=lambda: False,
                                metadata=SimpleNamespace(src_node_id=m.metadata.dst_node_id),
                                content=SimpleNamespace(config_records={CLIENT_RECORD: {
                                    PARTITION_ID: m.metadata.dst_node_id - 100}}))
                for m in messages]


def test_a_simulation_with_another_number_of_nodes_ends_at_once(task_identity):
    """`flwr run .` with Flower's default federation: 2 simulated SuperNodes, 10 clients asked.
    It waited 600 s; now one line saying which setting makes them equal."""
    from fedbarrier.errors import UserError
    from fedbarrier.fl.server_app import discover_partitions

    with pytest.raises(UserError) as mismatch:
        discover_partitions(NodesGrid([0, 2], simulated=True), 10, settle=0.3)
    assert str(mismatch.value).startswith("the federation has 2 clients (SuperNodes) but "
                                          "data.num_clients = 10")
    assert "num-supernodes=10" in str(mismatch.value) and "data.num_clients=2" in str(mismatch.value)


def test_more_nodes_than_clients_end_at_once_anywhere(task_identity):
    from fedbarrier.errors import UserError
    from fedbarrier.fl.server_app import discover_partitions

    with pytest.raises(UserError, match="the federation has 3 clients"):
        discover_partitions(NodesGrid([3], simulated=False), 2, settle=100.0)


def test_a_deployment_waits_for_late_nodes(task_identity, monkeypatch):
    from fedbarrier.fl import server_app

    monkeypatch.setattr(server_app.time, "sleep", lambda s: None)
    grid = NodesGrid([1, 1, 1, 1, 1, 2], simulated=False)  # unchanged for a while, then joined
    assert server_app.discover_partitions(grid, 2, settle=0.0) == {100: 0, 101: 1}


@pytest.mark.parametrize("published, simulated, asks", [
    ({100: 1, 101: 0}, True, False),         # the engine's own mapping: no message sent
    ({100: 1, 101: 0}, False, True),         # a deployment's nodes are not the engine's
    ({100: 1, 999: 0}, True, True),          # other nodes than the grid's (another engine)
    ({100: 1}, True, True),
    (None, True, True),                      # Flower's engine unpatched
])
def test_a_simulation_takes_the_engines_partitions_instead_of_asking_every_node(
        task_identity, monkeypatch, published, simulated, asks):
    from fedbarrier.fl import server_app

    monkeypatch.setattr(server_app, "simulated_partitions",
                        lambda wait=0.0: None if published is None else dict(published))
    grid = NodesGrid([2], simulated=simulated)
    found = server_app.discover_partitions(grid, 2, settle=0.0)
    assert found == ({100: 0, 101: 1} if asks else published)  # the query answers id - 100
    assert hasattr(grid, "queried") == asks


def test_the_server_waits_for_the_engine_to_publish_its_partitions(task_identity,
                                                                   monkeypatch) -> None:
    """100,000 nodes are all registered (the grid sees them) seconds before the engine has built
    their contexts and published the mapping: the server waits for it instead of asking each."""
    import threading

    from flwr.server.superlink.fleet.vce import vce_api

    from fedbarrier.fl import server_app
    from fedbarrier.runtime import engine_patches

    monkeypatch.setattr(vce_api, "_register_node_info_stores",
                        lambda nodes_mapping, run, app_dir=None: {})
    grid = NodesGrid([2], simulated=True)
    with engine_patches.fast_dispatch():
        later = threading.Timer(1.0, lambda: vce_api._register_node_info_stores(
            nodes_mapping={100: 1, 101: 0}, run=None, app_dir=None))
        later.start()
        try:
            found = server_app.discover_partitions(grid, 2, settle=0.0)
        finally:
            later.join()
    assert found == {100: 1, 101: 0} and not hasattr(grid, "queried")
