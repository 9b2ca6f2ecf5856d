"""The round pipeline without Flower or Ray: reply checks, exclusions, min_clients, bytes, the
record, and the order of the round's end (state saved before the record is written)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedbarrier.errors import RunAborted
from fedbarrier.fl.adapter import Instrumented, error_summary
from fedbarrier.fl.round import Reply, RoundPipeline, RoundRecord, check_reply, client_spread
from fedbarrier.measure.hook import ClientModels
from strategies.layerwise import LayerwiseFedAvg
from tests.conftest import FakeGrid, reply

EXPECTED = {"w": torch.zeros(2, 3), "b": torch.zeros(3), "steps": torch.zeros((), dtype=torch.long)}


def good(client: int, value: float = 1.0, n: int = 10, **extra: int) -> Reply:
    state = {"w": torch.full((2, 3), value), "b": torch.full((3,), value),
             "steps": torch.tensor(4)}
    return Reply(client=client, metrics={"num-examples": n, "train_loss": 0.5}, state=state,
                 **extra)


class Log:
    """A hook that records what it saw, and the order of events in ``events``."""

    def __init__(self, events: list[str], values=None) -> None:
        self.events, self.values = events, values
        self.models: ClientModels | None = None
        self.records: list[dict] = []

    def before_aggregation(self, models: ClientModels):
        self.models = models
        self.events.append("before_aggregation")
        return self.values

    def on_round_end(self, record: RoundRecord) -> None:
        self.events.append("on_round_end")
        self.records.append(record.to_json())


@pytest.mark.parametrize("bad, reason", [
    (Reply(client=1, error="CUDA out of memory", array_records=0), "client error: CUDA out of memory"),
    (Reply(client=1, metrics={"num-examples": 3, "diverged": 1.0}, state=dict(EXPECTED)),
     "diverged: non-finite training loss"),
    (Reply(client=1, metrics={"train_loss": 0.1}, state=dict(EXPECTED)),
     "malformed reply: expected one ArrayRecord and num-examples"),
    (Reply(client=1, metrics={"num-examples": 3}, state=dict(EXPECTED), array_records=2),
     "malformed reply: expected one ArrayRecord and num-examples"),
    (Reply(client=1, metrics={"num-examples": 3}, state={"w": EXPECTED["w"], "x": EXPECTED["b"]}),
     "wrong arrays: missing ['b', 'steps'], unexpected ['x']"),
    (Reply(client=1, metrics={"num-examples": 3}, state={**EXPECTED, "b": torch.zeros(4)}),
     "b has shape (4,), expected (3,)"),
    (Reply(client=1, metrics={"num-examples": 3},
           state={**EXPECTED, "w": torch.tensor([[0.0, float("inf"), 0.0]] * 2)}),
     "non-finite values in w"),
])
def test_each_unusable_reply_is_named_with_its_reason(bad: Reply, reason: str) -> None:
    assert check_reply(bad, EXPECTED) == reason
    assert check_reply(good(1), EXPECTED) is None


def test_unusable_replies_are_excluded_counted_and_kept_from_the_hooks() -> None:
    events: list[str] = []
    hook = Log(events, values={"measured": 1.0})
    pipeline = RoundPipeline([hook], min_clients=2)
    pipeline.begin(3, EXPECTED, bytes_sent=600)
    replies = [good(0, n=10, nbytes=100, nbytes_shared=60),
               Reply(client=1, error="boom", array_records=0),
               good(2, value=2.0, n=30, nbytes=100, nbytes_shared=60),
               Reply(client=4, metrics={"num-examples": 1, "diverged": 1.0}, state=dict(EXPECTED),
                     nbytes=100, nbytes_shared=60)]
    assert pipeline.train_replies(replies) == [0, 2]
    record = pipeline.record
    assert record.clients == [0, 2]
    assert record.excluded_clients == {"1": "client error: boom",
                                       "4": "diverged: non-finite training loss"}
    # bytes of the usable replies only: what the strategy shares, and the rest
    assert (record.bytes_received, record.bytes_instrumentation) == (120, 80)
    assert hook.models is not None
    assert hook.models.client_ids == [0, 2] and hook.models.num_examples == [10, 30]
    assert float(hook.models.states[1]["w"][0, 0]) == 2.0
    assert hook.models.received is EXPECTED  # decoded once, shared, not copied
    assert record.measured == {"measured": 1.0}


def test_below_min_clients_the_run_stops_with_every_reason() -> None:
    pipeline = RoundPipeline(min_clients=2)
    pipeline.begin(5, EXPECTED, bytes_sent=0)
    with pytest.raises(RunAborted) as err:
        pipeline.train_replies([good(0), Reply(client=3, error="gone", array_records=0)])
    assert str(err.value) == ("round 5: only 1 usable client models (minimum "
                              "strategy.min_clients = 2); excluded: client 3: client error: gone")


def test_the_round_end_waits_for_hooks_saves_state_then_writes_the_record() -> None:
    events: list[str] = []
    future: Future = Future()
    hook = Log(events, values=future)
    pipeline = RoundPipeline([hook])
    pipeline.begin(1, EXPECTED, bytes_sent=10, shared_layers=["w"])
    pipeline.train_replies([good(0), good(1)])
    pipeline.train_metrics({"train_loss": 0.5, "num-examples": 20})
    pipeline.evaluate_sent(5)
    pipeline.evaluate_replies([Reply(client=0, metrics={"num-examples": 2, "acc": 50.0}),
                               Reply(client=1, metrics={"num-examples": 2, "acc": 70.0}),
                               Reply(client=2, error="lost", array_records=0)],
                              {"acc": 60.0, "num-examples": 4})
    future.set_result({"barrier_full_test_loss": 0.25, "barrier_seconds_test": 0.5})

    def save(server_round: int) -> None:
        events.append(f"save {server_round}")

    record = pipeline.finish(1, {"global_test_loss": 1.0}, save).to_json()
    assert events == ["before_aggregation", "save 1", "on_round_end"]
    assert list(record) == [
        "round", "bytes_sent", "shared_layers", "excluded_clients", "bytes_received",
        "bytes_instrumentation", "clients", "train_loss", "acc_by_client", "acc_std", "acc_min",
        "acc_max", "evaluate_errors", "acc", "global_test_loss", "barrier_full_test_loss",
        "barrier_seconds_test", "measure_seconds", "measure_share", "wall_seconds"]
    assert record["bytes_sent"] == 15 and record["acc_by_client"] == {"0": 50.0, "1": 70.0}
    assert record["evaluate_errors"] == {"2": "client error: lost"}
    assert record["measure_seconds"] == 0.5
    assert record["measure_share"] == pytest.approx(0.5 / record["wall_seconds"])
    assert hook.records == [record]


def test_round_zero_records_only_the_initial_evaluation() -> None:
    events: list[str] = []
    pipeline = RoundPipeline([Log(events)])
    record = pipeline.finish(0, {"global_test_loss": 2.3}, lambda r: events.append("save"))
    assert record.to_json() == {"round": 0, "global_test_loss": 2.3, "wall_seconds": 0.0}
    assert events == ["on_round_end"]  # nothing to save for the initial model


def test_client_spread_ignores_the_weight_and_non_numbers() -> None:
    spread = client_spread([Reply(client=4, metrics={"num-examples": 9, "acc": 1.0, "tag": "x"}),
                            Reply(client=2, metrics={"num-examples": 1, "acc": 3.0})])
    assert spread == {"acc_by_client": {"4": 1.0, "2": 3.0}, "acc_std": 1.0, "acc_min": 1.0,
                      "acc_max": 3.0}


def test_a_ray_traceback_is_summarized_to_its_message() -> None:
    reason = ("\x1b[36mray::ClientAppActor.run()\x1b[39m\n  File x, line 3\n"
              "ClientAppException:\nException ClientAppException occurred. Message: "
              "injected client failure'>\n")
    assert error_summary(reason) == "injected client failure"
    assert error_summary("") == "unknown error"


# -- the Flower adapter: messages in, the pipeline's steps out ----------------------------------
def train_round(strategy: Instrumented, server_round: int, states: list[dict]) -> None:
    start = ArrayRecord({"a.weight": torch.zeros(2), "b.weight": torch.zeros(2)})
    messages = list(strategy.configure_train(server_round, start, ConfigRecord(),
                                             FakeGrid([9, 7])))  # type: ignore[arg-type]
    assert sorted(m.metadata.dst_node_id for m in messages) == [7, 9]
    strategy.aggregate_train(server_round, [reply(9, 1, states[1], {"num-examples": 30}),
                                            reply(7, 0, states[0], {"num-examples": 10})])


def test_the_adapter_counts_bytes_and_offsets_rounds_after_a_resume(task_identity) -> None:
    events: list[str] = []
    hook = Log(events)
    strategy = Instrumented(LayerwiseFedAvg({"a": ["a.weight"], "b": ["b.weight"]}, ["a"],
                                            min_available_nodes=2, min_train_nodes=2),
                            [hook], partition_of={7: 0, 9: 1}, completed_rounds=4)
    states = [{"a.weight": torch.ones(2), "b.weight": torch.ones(2)},
              {"a.weight": torch.full((2,), 3.0), "b.weight": torch.ones(2)}]
    train_round(strategy, 1, states)  # Flower's first round after a resume after round 4
    record = strategy.pipeline.record
    assert record.round == 5 and hook.models is not None and hook.models.server_round == 5
    assert record.clients == [0, 1] and record.shared_layers == ["a"]
    one = ArrayRecord({"x": torch.ones(2)})["x"]
    size = len(one.data)  # one float32[2] array, serialized
    assert record.bytes_sent == 2 * size  # layer a to each client
    assert (record.bytes_received, record.bytes_instrumentation) == (2 * size, 2 * size)
    # Flower's round 1 after the resume is round 5 in the record, and its evaluation too
    strategy._round_end(1, ArrayRecord({"a.weight": torch.zeros(2), "b.weight": torch.zeros(2)}))
    assert hook.records[-1]["round"] == 5
    assert strategy._round_end(0, ArrayRecord()) is None  # round 0 belongs to the first attempt
    assert [r["round"] for r in hook.records] == [5]


def test_start_writes_records_without_the_caller_passing_evaluate_fn(monkeypatch) -> None:
    # Flower's Strategy.start calls evaluate_fn before round 1 and after every round: the
    # adapter's own round end is what it gets, with a caller's evaluate_fn merged in.
    seen = {}

    def fake_start(self, grid, initial_arrays, num_rounds, timeout, train_config,
                   evaluate_config, evaluate_fn=None):
        seen["evaluate_fn"] = evaluate_fn
        return evaluate_fn(0, initial_arrays)

    from flwr.serverapp.strategy import Strategy

    monkeypatch.setattr(Strategy, "start", fake_start)
    events: list[str] = []
    hook = Log(events)
    strategy = Instrumented(FedAvg(), [hook], global_evaluate=lambda r, s: {"global_test_loss": 1.0})
    result = strategy.start(grid=None, initial_arrays=ArrayRecord({"w": torch.zeros(1)}),
                            evaluate_fn=lambda r, a: {"mine": 2.0})  # type: ignore[arg-type]
    assert seen["evaluate_fn"] == strategy._round_end
    assert dict(result) == {"global_test_loss": 1.0, "mine": 2.0}
    assert hook.records == [{"round": 0, "global_test_loss": 1.0, "mine": 2.0, "wall_seconds": 0.0}]


def test_error_replies_from_flower_become_excluded_clients(task_identity) -> None:
    events: list[str] = []
    strategy = Instrumented(FedAvg(min_available_nodes=2, min_train_nodes=2), [Log(events)],
                            partition_of={7: 0, 9: 1})
    start = ArrayRecord({"a.weight": torch.zeros(2)})
    list(strategy.configure_train(1, start, ConfigRecord(), FakeGrid([7, 9])))  # type: ignore[arg-type]
    request = Message(content=RecordDict(), dst_node_id=9, message_type=MessageType.TRAIN)
    failed = Message(content=RecordDict(), reply_to=request)
    from flwr.app import Error

    failed = Message(Error(code=0, reason="Message: injected client failure"), reply_to=request)
    arrays, _ = strategy.aggregate_train(1, [failed, reply(7, 0, {"a.weight": torch.ones(2)},
                                                           {"num-examples": 5})])
    record = strategy.pipeline.record
    assert record.excluded_clients == {"1": "client error: injected client failure"}
    assert record.clients == [0]
    assert arrays is not None and float(arrays.to_torch_state_dict()["a.weight"][0]) == 1.0
