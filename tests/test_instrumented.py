"""Instrumented's round bookkeeping: when the server's global evaluation starts and ends."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedbarrier.hook import RoundHook
from fedbarrier.instrumented import Instrumented


class Records(RoundHook):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))


def arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": torch.full((2,), value)})


def test_global_evaluation_starts_with_the_clients_evaluation_and_ends_the_round() -> None:
    calls: list[tuple[int, float]] = []
    pool = ThreadPoolExecutor(1)

    def global_evaluate(server_round: int, record: ArrayRecord) -> Future[dict[str, float]]:
        value = float(record.to_torch_state_dict()["w"][0])
        calls.append((server_round, value))
        return pool.submit(lambda: {"global_test_loss": value})

    hook = Records()
    strategy = Instrumented(FedAvg(fraction_evaluate=0.0), [hook], global_evaluate=global_evaluate)
    global_model = arrays(1.5)
    messages = strategy.configure_evaluate(1, global_model, ConfigRecord(), grid=None)  # type: ignore[arg-type]
    assert list(messages) == []
    assert calls == [(1, 1.5)]  # started before the clients evaluate, not after
    result = strategy.evaluate_fn(1, global_model)
    assert calls == [(1, 1.5)]  # collected, not evaluated again
    assert result is not None and result["global_test_loss"] == 1.5
    assert hook.records[-1]["global_test_loss"] == 1.5

    # Arrays other than those configure_evaluate saw are evaluated where Flower asks.
    strategy.configure_evaluate(2, arrays(2.0), ConfigRecord(), grid=None)  # type: ignore[arg-type]
    strategy.evaluate_fn(2, arrays(3.0))
    assert calls[1:] == [(2, 2.0), (2, 3.0)]
    assert hook.records[-1]["global_test_loss"] == 3.0
    pool.shutdown()


def test_a_synchronous_global_evaluate_still_works() -> None:
    hook = Records()
    strategy = Instrumented(FedAvg(fraction_evaluate=0.0), [hook],
                            global_evaluate=lambda r, a: {"global_test_accuracy": float(r)})
    strategy.evaluate_fn(0, arrays(0.0))
    model = arrays(1.0)
    strategy.configure_evaluate(1, model, ConfigRecord(), grid=None)  # type: ignore[arg-type]
    strategy.evaluate_fn(1, model)
    assert [r["global_test_accuracy"] for r in hook.records] == [0.0, 1.0]
