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


def faulty_app(cfg, store_root, faults: dict[int, dict[int, str]]) -> ClientApp:
    """fedbarrier's client, except that some clients misbehave: ``faults[round][client]``."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        fault = faults.get(int(msg.content["config"]["server-round"]), {}).get(pid)
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


def test_faulty_clients_are_excluded_and_recorded_then_too_few_stop_the_run(tmp_path):
    """One run: in round 2 three of five clients fail in three ways and the run goes on with the
    other two (min_clients = 2); in round 3 four fail and it stops with a clear message, keeping
    every record of rounds 0-2."""
    cfg = load_config(None, FIVE + ["strategy.min_clients=2", "train.rounds=3"])
    out = tmp_path / "run"
    faults = {2: {1: "raise", 2: "nan", 3: "shape"},
              3: {0: "diverge", 1: "nan", 2: "raise", 3: "shape"}}
    app = faulty_app(cfg, out / CLIENTS_DIR, faults)
    with pytest.raises(RunAborted, match="round 3: only 1 usable client models") as stopped:
        run_experiment(cfg, out, progress=False, client_app=app)
    assert "client 0: diverged" in str(stopped.value)
    metrics = read(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["excluded_clients"] == {}
    excluded = metrics[2]["excluded_clients"]
    assert sorted(excluded) == ["1", "2", "3"]
    assert "injected client failure" in excluded["1"]
    assert "non-finite" in excluded["2"]
    assert "shape" in excluded["3"]
    assert metrics[2]["clients"] == [0, 4]
    # barriers between the two usable models only; nothing NaN was averaged in
    assert [b["round"] for b in read(out / "barriers.jsonl") if b["split"] == "test"] == [1, 2]
    assert metrics[2]["global_test_loss"] == metrics[2]["global_test_loss"]  # not NaN
    import ray

    assert not ray.is_initialized()
