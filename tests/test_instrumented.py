"""The Flower adapter's round bookkeeping: when the server's global evaluation starts and ends,
what each client was sent, and that Flower's own ``start`` writes the records."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedbarrier.fl.adapter import Instrumented
from fedbarrier.fl.round import RoundRecord
from fedbarrier.measure.barriers import layer_distances
from fedbarrier.measure.hook import ClientModels
from strategies.layerwise import LayerwiseFedAvg
from tests.conftest import FakeGrid, reply


class Records:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def before_aggregation(self, models: ClientModels) -> None:
        return None

    def on_round_end(self, record: RoundRecord) -> None:
        self.records.append(record.to_json())


def arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": torch.full((2,), value)})


def test_global_evaluation_starts_with_the_clients_evaluation_and_ends_the_round() -> None:
    calls: list[tuple[int, float]] = []
    pool = ThreadPoolExecutor(1)

    def global_evaluate(server_round: int, state: dict[str, torch.Tensor]
                        ) -> Future[dict[str, float]]:
        value = float(state["w"][0])
        calls.append((server_round, value))
        return pool.submit(lambda: {"global_test_loss": value})

    hook = Records()
    strategy = Instrumented(FedAvg(fraction_evaluate=0.0), [hook], global_evaluate=global_evaluate)
    global_model = arrays(1.5)
    messages = strategy.configure_evaluate(1, global_model, ConfigRecord(), grid=None)  # type: ignore[arg-type]
    assert list(messages) == []
    assert calls == [(1, 1.5)]  # started before the clients evaluate, not after
    result = strategy._round_end(1, global_model)
    assert calls == [(1, 1.5)]  # collected, not evaluated again
    assert result is not None and result["global_test_loss"] == 1.5
    assert hook.records[-1]["global_test_loss"] == 1.5

    # Arrays other than those configure_evaluate saw are evaluated where Flower asks.
    strategy.configure_evaluate(2, arrays(2.0), ConfigRecord(), grid=None)  # type: ignore[arg-type]
    strategy._round_end(2, arrays(3.0))
    assert calls[1:] == [(2, 2.0), (2, 3.0)]
    assert hook.records[-1]["global_test_loss"] == 3.0
    pool.shutdown()


def test_a_synchronous_global_evaluate_still_works() -> None:
    hook = Records()
    strategy = Instrumented(FedAvg(fraction_evaluate=0.0), [hook],
                            global_evaluate=lambda r, a: {"global_test_accuracy": float(r)})
    strategy._round_end(0, arrays(0.0))
    model = arrays(1.0)
    strategy.configure_evaluate(1, model, ConfigRecord(), grid=None)  # type: ignore[arg-type]
    strategy._round_end(1, model)
    assert [r["global_test_accuracy"] for r in hook.records] == [0.0, 1.0]


class Capture:
    def before_aggregation(self, models: ClientModels) -> None:
        self.models = models

    def on_round_end(self, record: RoundRecord) -> None:
        return None


GROUPS = {"a": ["a.weight"], "b": ["b.weight"]}


def one_round(inner, clients: list[dict[str, torch.Tensor]]) -> ClientModels:
    capture = Capture()
    strategy = Instrumented(inner, [capture], partition_of={7: 0, 9: 1})
    start = ArrayRecord({"a.weight": torch.zeros(2), "b.weight": torch.zeros(2)})
    list(strategy.configure_train(1, start, ConfigRecord(), FakeGrid([9, 7])))
    strategy.aggregate_train(1, [reply(7, 0, clients[0], {"num-examples": 10}),
                                 reply(9, 1, clients[1], {"num-examples": 10})])
    return capture.models


def test_drift_is_measured_against_what_each_client_was_sent(task_identity) -> None:
    clients = [{"a.weight": torch.tensor([3.0, 4.0]), "b.weight": torch.tensor([1.0, 0.0])},
               {"a.weight": torch.tensor([0.0, 1.0]), "b.weight": torch.tensor([0.0, 2.0])}]
    # FedAvg sends the whole model to everyone: one reference, decoded once.
    models = one_round(FedAvg(min_available_nodes=2, min_train_nodes=2), clients)
    assert models.sent is not None and all(s is models.received for s in models.sent)
    # Partial sharing (layer a shared, b personal): the clients were sent layer a only, so b
    # and the whole model have no drift, instead of one against a server copy never sent.
    models = one_round(LayerwiseFedAvg(GROUPS, ["a"], min_available_nodes=2, min_train_nodes=2),
                       clients)
    assert models.sent is not None and [sorted(s) for s in models.sent] == [["a.weight"]] * 2
    distances = layer_distances(models.states, models.num_examples, GROUPS,
                                reference=models.sent or models.received)
    assert distances["a"]["drift"] == pytest.approx([5.0, 1.0])
    assert "drift" not in distances["b"] and "drift" not in distances["model"]


def test_the_grid_strategies_see_tells_client_ids_of_known_nodes_only() -> None:
    strategy = Instrumented(FedAvg(), partition_of={7: 0, 9: 1})
    grid = strategy._grid(FakeGrid([9, 7, 8]))  # type: ignore[arg-type]
    assert grid.get_node_ids() == [7, 9, 8]  # by client id; unknown nodes by their node id
    assert (grid.partition_id(9), grid.partition_id(8)) == (1, None)


class CountingGrid(FakeGrid):
    def __init__(self, nodes: list[int]) -> None:
        super().__init__(nodes)
        self.listed = 0

    def get_node_ids(self) -> list[int]:
        self.listed += 1
        return super().get_node_ids()


@pytest.mark.parametrize("static", [True, False])
def test_a_simulations_nodes_are_listed_once_a_deployments_every_time(static: bool) -> None:
    """100,000 simulated nodes cost 0.15 s to list and order; they never change in a run."""
    strategy = Instrumented(FedAvg(), partition_of={7: 0, 9: 1}, static_nodes=static)
    grid = CountingGrid([9, 7, 8])
    for _ in range(3):
        assert strategy._grid(grid).get_node_ids() == [7, 9, 8]  # type: ignore[arg-type]
    assert grid.listed == (1 if static else 3)
