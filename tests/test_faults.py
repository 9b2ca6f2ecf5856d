"""Injected client faults: excluded from aggregation and barriers, recorded, run goes on or stops."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import Array, Context, Message
from flwr.clientapp import ClientApp

from fedbarrier.config import load_config
from fedbarrier.errors import RunAborted
from fedbarrier.fl.client_app import CLIENTS_DIR, client_evaluate, client_query, client_train
from fedbarrier.fl.simulation import run_experiment
from tests.conftest import TINY

pytestmark = pytest.mark.slow
FIVE = TINY + ["data.num_clients=5", "data.partition=iid"]


def corrupt(reply: Message, how: str) -> Message:
    arrays = next(iter(reply.content.array_records.values()))
    key = next(iter(arrays.keys()))
    tensor = arrays[key].numpy()
    if how == "nan":
        bad = torch.full(tensor.shape, float("nan"))
    elif how == "shape":
        bad = torch.zeros(3, 3)
    else:
        raise ValueError(how)
    arrays[key] = Array.from_torch_tensor(bad)
    return reply


def faulty_app(cfg, store_root, faults: dict[int, str], in_round: int) -> ClientApp:
    """fedbarrier's client, except that some clients misbehave in one round."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        fault = faults.get(pid) if int(msg.content["config"]["server-round"]) == in_round else None
        if fault == "raise":
            raise RuntimeError("injected client failure")
        reply = client_train(msg, context, cfg, store_root)
        if fault == "diverge":
            next(iter(reply.content.metric_records.values()))["diverged"] = 1.0
        elif fault:
            reply = corrupt(reply, fault)
        return reply

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, cfg, store_root)

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return client_query(msg, context)

    return app


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_faulty_clients_are_excluded_and_recorded_and_the_run_goes_on(tmp_path):
    cfg = load_config(None, FIVE)
    out = tmp_path / "run"
    faults = {1: "raise", 2: "nan", 3: "shape", 4: "diverge"}
    app = faulty_app(cfg, out / CLIENTS_DIR, faults, in_round=2)
    run_experiment(cfg, out, progress=False, client_app=app)
    metrics = read(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["excluded_clients"] == {}
    excluded = metrics[2]["excluded_clients"]
    assert sorted(excluded) == ["1", "2", "3", "4"]
    assert "injected client failure" in excluded["1"]
    assert "non-finite" in excluded["2"]
    assert "shape" in excluded["3"]
    assert "diverged" in excluded["4"]
    assert metrics[2]["clients"] == [0]
    # one usable model left: no barrier between models in round 2, nothing NaN was averaged in
    assert [b["round"] for b in read(out / "barriers.jsonl") if b["split"] == "test"] == [1]
    assert metrics[2]["global_test_loss"] == metrics[2]["global_test_loss"]  # not NaN


def test_too_few_usable_clients_stops_with_a_clear_message_and_keeps_records(tmp_path):
    cfg = load_config(None, FIVE + ["strategy.min_clients=3"])
    out = tmp_path / "run"
    app = faulty_app(cfg, out / CLIENTS_DIR, {0: "nan", 1: "nan", 2: "raise"}, in_round=2)
    with pytest.raises(RunAborted, match="round 2: only 2 usable client models"):
        run_experiment(cfg, out, progress=False, client_app=app)
    assert [m["round"] for m in read(out / "metrics.jsonl")] == [0, 1]
    import ray

    assert not ray.is_initialized()
