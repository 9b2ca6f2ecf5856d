"""A client's side of local barriers, in-process: it measures its own model of the round against
the average the server sent, whose layers arrive in two records (the shared ones, and the rest of
the average) and so in another key order than its model's."""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedbarrier.config import load_config
from fedbarrier.fl import client_app
from fedbarrier.fl.client_measure import local_report
from fedbarrier.runtime.build import initial_state
from tests.conftest import TINY


def test_a_partial_sharing_client_measures_against_the_whole_average(tmp_path, task_identity):
    cfg = load_config(None, [*TINY, "strategy.name=lg-fedavg"])
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})
    head = ("fc2.weight", "fc2.bias")
    init = initial_state(cfg)
    train = Message(RecordDict({
        "arrays": ArrayRecord({k: init[k] for k in head}),
        "config": ConfigRecord({"server-round": 1, "shared-layers": ["fc2"]})}),
        dst_node_id=1, message_type=MessageType.TRAIN)
    own = client_app.client_train(train, context, cfg, tmp_path).content["arrays"]
    own = own.to_torch_state_dict()
    average = {k: v + 0.01 for k, v in own.items()}
    evaluate = Message(RecordDict({
        "arrays": ArrayRecord({k: average[k] for k in head}),
        "config": ConfigRecord({"server-round": 1, "shared-layers": ["fc2"],
                                "local-barriers": True, "local-only": False}),
        "barrier-average": ArrayRecord({k: v for k, v in average.items() if k not in head})}),
        dst_node_id=1, message_type=MessageType.EVALUATE)
    reply = client_app.client_evaluate(evaluate, context, cfg, tmp_path)
    assert reply.content["metrics"]["num-examples"] > 0  # it was sampled for accuracy too
    reports = {s: json.loads(str(v)) for s, v in reply.content["local-barriers"].items()}
    assert set(reports) == {"local-train", "local-test"}
    want = local_report(cfg, 0, own, average, "local-train", torch.device("cpu"))
    assert reports["local-train"] == json.loads(json.dumps(want))
    assert set(reports["local-train"]["per_layer"]["loss"]) == {"conv1", "conv2", "fc1", "fc2"}


def test_a_client_without_a_model_of_the_round_says_so():
    cfg = load_config(None, TINY)
    report = local_report(cfg, 0, None, initial_state(cfg), "local-train", torch.device("cpu"))
    assert report == {"skipped": "the client has no model of this round"}
