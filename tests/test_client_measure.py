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


def test_own_initialization_starts_round_1_from_the_clients_seed_not_the_servers_model(
        tmp_path, task_identity):
    """train.client_init = "own": clients that trained apart from different initializations
    (what alignment is for). Round 1 ignores the initial model sent; later rounds do not."""

    def trained(init: str, server_round: int, pid: int = 1):
        cfg = load_config(None, [*TINY, f"train.client_init={init}", "train.local_steps=1",
                                 "barriers.enabled=false"])
        context = Context(run_id=1, node_id=1, node_config={"partition-id": pid},
                          state=RecordDict(), run_config={})
        message = Message(RecordDict({"arrays": ArrayRecord(initial_state(cfg)),
                                      "config": ConfigRecord({"server-round": server_round})}),
                          dst_node_id=1, message_type=MessageType.TRAIN)
        reply = client_app.client_train(message, context, cfg, tmp_path / init / str(server_round))
        return cfg, reply.content["arrays"].to_torch_state_dict()

    cfg, own_1 = trained("own", 1)
    _, common_1 = trained("common", 1)
    _, own_2 = trained("own", 2)
    _, common_2 = trained("common", 2)
    assert not torch.equal(own_1["conv1.weight"], common_1["conv1.weight"])
    torch.testing.assert_close(own_2, common_2)  # after round 1 the server's model is the start
    # round 1 with "own" is one SGD step from the client's own initialization
    mine = initial_state(cfg, 1)
    assert not torch.equal(mine["conv1.weight"], initial_state(cfg)["conv1.weight"])
    assert (own_1["conv1.weight"] - mine["conv1.weight"]).abs().max() < \
        (own_1["conv1.weight"] - initial_state(cfg)["conv1.weight"]).abs().max()
