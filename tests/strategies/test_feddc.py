"""FedDC (federated daisy-chaining): the schedule, the hand-over, what travels each round, and a
real federation whose daisy-chained models are checked against replayed local training.

Also holds the model helpers the other scheme tests import (model, value_of).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedbarrier.config import load_config
from fedbarrier.fl.protocol import SHARED_LAYERS
from fedbarrier.runtime.rundir import RunDir
from strategies import build_strategy
from strategies.feddc import AVERAGE, COMMON, DAISY, KEEP, FedDC, daisy_chain, feddc_step
from tests.conftest import TINY, FakeGrid, reply
from tests.strategies.replay import assert_same_model, replay_round

GROUPS = {"conv": ["conv.weight"], "fc": ["fc.weight", "fc.bias"]}
KEYS = [k for keys in GROUPS.values() for k in keys]


def model(value):
    return {k: torch.full((2,), float(value)) for k in KEYS}


def value_of(arrays):
    """The constant every tensor of a test model holds (None for an empty record)."""
    values = {float(v) for k in arrays for v in arrays[k].numpy().ravel()}
    assert len(values) <= 1
    return values.pop() if values else None


# Clients 0, 1, 2 on nodes 10, 11, 12 return models filled with 10 * (pid + 1), weights 1, 1, 2.
def replies(offset=0):
    return [reply(10 + pid, pid, model(10 * (pid + 1) + offset), {"num-examples": [1, 1, 2][pid]})
            for pid in range(3)]


def test_schedule_averages_on_aggregation_rounds_and_daisy_chains_in_between():
    assert [feddc_step(t, 1, 3) for t in range(1, 7)] == [DAISY, DAISY, AVERAGE] * 2
    assert [feddc_step(t, 2, 4) for t in range(1, 5)] == [KEEP, DAISY, KEEP, AVERAGE]
    assert [feddc_step(t, 0, 2) for t in range(1, 5)] == [KEEP, AVERAGE] * 2  # periodic averaging


class Reverse(random.Random):
    def shuffle(self, x):
        x.reverse()


def test_daisy_chain_is_a_permutation_of_the_clients():
    assert daisy_chain([3, 5, 8], Reverse()) == {8: 3, 5: 5, 3: 8}
    chain = daisy_chain(list(range(20)), random.Random(0))
    assert sorted(chain) == sorted(chain.values()) == list(range(20))


def sent(messages):
    """{node: (value of the model sent or None, shared-layers)}"""
    return {m.metadata.dst_node_id: (value_of(m.content["arrays"]),
                                     tuple(m.content["config"][SHARED_LAYERS])) for m in messages}


def test_models_travel_as_the_schedule_says(task_identity):
    # Prepare
    strategy = FedDC(GROUPS, daisy_period=1, aggregation_period=3, min_available_nodes=3,
                     min_train_nodes=3)
    grid, config = FakeGrid([10, 11, 12]), ConfigRecord({"lr": 0.1})
    initial = ArrayRecord(model(0))
    # Execute / Assert: round 1 everyone gets the initial model, whole
    assert sent(strategy.configure_train(1, initial, config, grid)) == {
        n: (0.0, ("conv", "fc")) for n in (10, 11, 12)}
    round_1 = replies()
    random.seed(5)
    expected = daisy_chain([0, 1, 2], random.Random(random.getrandbits(64)))
    random.seed(5)
    average, metrics = strategy.aggregate_train(1, round_1)
    assert value_of(average) == pytest.approx((10 + 20 + 2 * 30) / 4)  # example-weighted mean
    assert metrics["feddc_step"] == DAISY and list(metrics["feddc_model_from"]) == [COMMON] * 3
    assert [value_of(m.content["arrays"]) for m in round_1] == [10.0, 20.0, 30.0]  # untouched
    # after a daisy round, clients evaluate their own models: nothing is sent
    assert set(sent(strategy.configure_evaluate(1, average, config, grid)).values()) == {(None, ())}
    # round 2: client k trains the model client expected[k] returned in round 1
    assert sent(strategy.configure_train(2, average, config, grid)) == {
        10 + k: (10.0 * (source + 1), ("conv", "fc")) for k, source in expected.items()}
    average, metrics = strategy.aggregate_train(2, replies(offset=1))
    assert list(metrics["feddc_model_from"]) == [expected[k] for k in range(3)]
    assert strategy.history[2] == expected
    assert dict(config) == {"lr": 0.1}  # the caller's config is not modified
    # round 2 is followed by round 3, then an average that clients evaluate and train from
    strategy.configure_train(3, average, config, grid)
    average, metrics = strategy.aggregate_train(3, replies())
    assert metrics["feddc_step"] == AVERAGE
    mean = (10 + 20 + 2 * 30) / 4
    assert set(sent(strategy.configure_evaluate(3, average, config, grid)).values()) == {
        (mean, ("conv", "fc"))}
    assert set(sent(strategy.configure_train(4, average, config, grid)).values()) == {
        (mean, ("conv", "fc"))}


def test_without_daisy_chaining_clients_keep_their_models_and_nothing_travels(task_identity):
    # Prepare: daisy_period = 0, aggregation_period = 2 (periodic averaging)
    strategy = build_strategy(load_config(None, ["strategy.name=feddc", "strategy.daisy_period=0",
                                                 "strategy.aggregation_period=2"]).strategy,
                              3, GROUPS)
    grid = FakeGrid([10, 11, 12])
    strategy.configure_train(1, ArrayRecord(model(0)), ConfigRecord(), grid)
    _, metrics = strategy.aggregate_train(1, replies())
    assert metrics["feddc_step"] == KEEP
    # Execute
    messages = strategy.configure_train(2, ArrayRecord(model(0)), ConfigRecord(), grid)
    # Assert
    assert set(sent(messages).values()) == {(None, ())}
    _, metrics = strategy.aggregate_train(2, replies())
    assert list(metrics["feddc_model_from"]) == [0, 1, 2] and metrics["feddc_step"] == AVERAGE


def test_a_state_without_handover_models_follows_the_schedule_and_keeps():
    strategy = FedDC(GROUPS, daisy_period=2, aggregation_period=4)
    strategy.aggregate_train(3, [])  # no replies: only the round is recorded
    assert strategy.state_dict() == {"round": 3}
    for last, step in [(0, AVERAGE), (3, KEEP), (4, AVERAGE), (6, KEEP)]:  # 6: daisy -> keep
        resumed = FedDC(GROUPS, daisy_period=2, aggregation_period=4)
        resumed.load_state_dict({"round": last})
        assert resumed._step == step


class ResumedGrid(FakeGrid):
    """A resumed run's grid: new node ids, partition ids from Instrumented's discovery."""

    def partition_id(self, node):
        return node - 20


def test_a_resumed_run_hands_over_the_saved_models(task_identity, tmp_path):
    # Prepare: round 1 ends in a daisy step; the server state is saved as after every round
    strategy = FedDC(GROUPS, daisy_period=1, aggregation_period=3, min_available_nodes=3,
                     min_train_nodes=3)
    strategy.configure_train(1, ArrayRecord(model(0)), ConfigRecord(), FakeGrid([10, 11, 12]))
    random.seed(5)
    average, _ = strategy.aggregate_train(1, replies())
    uninterrupted = sent(strategy.configure_train(2, average, ConfigRecord(),
                                                  FakeGrid([10, 11, 12])))
    run = RunDir.create(tmp_path / "run")
    run.save_server_state(1, average.to_torch_state_dict(), strategy.state_dict())
    # Execute: a new process loads the state; the clients are now nodes 20, 21, 22
    global_state, state = run.load_server_state(1)
    resumed = FedDC(GROUPS, daisy_period=1, aggregation_period=3, min_available_nodes=3,
                    min_train_nodes=3)
    resumed.load_state_dict(state)
    after = sent(resumed.configure_train(2, ArrayRecord(global_state), ConfigRecord(),
                                         ResumedGrid([20, 21, 22])))
    # Assert: every client gets the model it would have got without the interruption
    assert (run.path / "state" / "strategy-0001.pt").exists()
    assert {node - 20: v for node, v in after.items()} == {
        node - 10: v for node, v in uninterrupted.items()}
    assert {v for v, _ in after.values()} == {10.0, 20.0, 30.0}  # hand-overs, not the average


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_daisy_chained_models_continue_training_on_the_next_client(tmp_path):
    """Round 1 daisy-chains, round 2 averages; each round-2 model is replayed by hand from the
    round-1 model the log says it got."""
    from fedbarrier.fl.simulation import run_experiment

    cfg = load_config(None, TINY + ["strategy.name=feddc", "strategy.aggregation_period=2",
                                    "output.save_client_models=true",
                                    "barriers.families=[\"full\"]"])
    run_experiment(cfg, tmp_path / "run", progress=False)
    first, second = read(tmp_path / "run" / "metrics.jsonl")[1:]
    assert first["feddc_step"] == DAISY and first["feddc_model_from"] == [COMMON] * 3
    assert second["feddc_step"] == AVERAGE and sorted(second["feddc_model_from"]) == [0, 1, 2]
    assert first["bytes_sent"] > 0 and second["bytes_received"] > 0

    checkpoints = tmp_path / "run" / "checkpoints"
    for pid, source in zip(second["clients"], second["feddc_model_from"]):
        start = torch.load(checkpoints / "round-0001" / f"client-{source}.pt", weights_only=True)
        net = replay_round(cfg, pid, start, 2)
        saved = torch.load(checkpoints / "round-0002" / f"client-{pid}.pt", weights_only=True)
        assert_same_model(saved, net)
