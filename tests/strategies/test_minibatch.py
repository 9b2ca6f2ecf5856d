"""Distributed mini-batch SGD: exactly one local step per round, the equivalence of averaging one
step with one step on the union mini-batch, and a real federation replayed by hand."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn

from fedbarrier.config import load_config
from fedbarrier.fl.protocol import LOCAL_STEPS
from fedbarrier.learn.local import train
from strategies import build_strategy
from strategies.minibatch import MinibatchSGD
from tests.conftest import TINY, FakeGrid
from tests.strategies.test_feddc import GROUPS, model

CPU = torch.device("cpu")


def step(net, x, y, *, steps=1, batch_size=1, lr=0.1, momentum=0.9):
    return train(net, x, y, epochs=1, batch_size=batch_size, lr=lambda s, t: lr, momentum=momentum,
                 weight_decay=0.0, seed=0, device=CPU, steps=steps)


def zero_linear():
    net = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(net.weight)
    return net


def test_one_local_step_by_hand():
    # Prepare: logits 0 -> softmax (½, ½); label 0 -> dLoss/dlogits = (-½, ½), x = 1
    net = zero_linear()
    x, y = torch.ones(3, 1), torch.zeros(3, dtype=torch.long)
    # Execute: one step, although an epoch of batch size 1 would take three
    stats = step(net, x, y)
    # Assert: W = 0 - 0.1 * (-½, ½) (the first momentum step is the plain gradient step)
    torch.testing.assert_close(net.weight.detach(), torch.tensor([[0.05], [-0.05]]))
    assert (stats.steps, stats.examples) == (1, 1)


def test_steps_run_past_an_epoch_on_reshuffled_data():
    stats = step(zero_linear(), torch.ones(3, 1), torch.zeros(3, dtype=torch.long), steps=5,
                 batch_size=2)
    assert (stats.steps, stats.examples) == (5, 2 + 1 + 2 + 1 + 2)


def test_averaging_one_step_per_client_is_one_step_on_the_union_batch():
    # Prepare: two clients with one example each (Dekel et al.: the m workers' mini-batches)
    x, y = torch.tensor([[1.0], [-2.0]]), torch.tensor([0, 1])
    clients = []
    for k in range(2):
        net = zero_linear()
        step(net, x[k:k + 1], y[k:k + 1], momentum=0.0)
        clients.append(net.weight.detach())
    union = zero_linear()
    # Execute
    step(union, x, y, batch_size=2, momentum=0.0)
    # Assert: equal weights (one example each), as FedAvg weights them
    torch.testing.assert_close((clients[0] + clients[1]) / 2, union.weight.detach())


@pytest.mark.usefixtures("task_identity")
def test_every_client_is_told_to_take_one_step():
    strategy = build_strategy(load_config(None, ["strategy.name=minibatch-sgd"]).strategy, 3, GROUPS)
    assert isinstance(strategy, MinibatchSGD)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(1, ArrayRecord(model(0)), config, FakeGrid([1, 2, 3])))
    assert len(messages) == 3
    assert all(m.content["config"][LOCAL_STEPS] == 1 for m in messages)
    assert sorted(messages[0].content["arrays"]) == sorted(k for ks in GROUPS.values() for k in ks)
    assert dict(config) == {"lr": 0.1}


@pytest.mark.slow
def test_minibatch_sgd_federation_takes_one_step_per_client_and_round(tmp_path):
    from fedbarrier.data.federation import federation
    from fedbarrier.fl.client_app import _model
    from fedbarrier.fl.simulation import run_experiment
    from fedbarrier.learn.local import local_update
    from fedbarrier.runtime.build import initial_state

    cfg = load_config(None, TINY + ["strategy.name=minibatch-sgd", "output.save_client_models=true",
                                    "barriers.families=[\"full\"]"])
    run_experiment(cfg, tmp_path / "run", progress=False)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fed, t = federation(cfg.data, cfg.seed), cfg.train
    for pid in rounds[1]["clients"]:
        net = _model(cfg.model, fed.input_shape, fed.num_classes)
        net.load_state_dict(initial_state(cfg))
        data = fed.client_train(pid)
        stats = local_update(net, data.x, data.y, t, run_seed=cfg.seed, client=pid,
                             server_round=1, device=CPU, steps=1)
        assert stats.steps == 1 and len(data) > t.batch_size  # an epoch would take more steps
        saved = torch.load(tmp_path / "run" / "checkpoints" / "round-0001" / f"client-{pid}.pt",
                           weights_only=True)
        for key, value in net.state_dict().items():
            torch.testing.assert_close(saved[key], value, atol=1e-6, rtol=1e-6)
    # communication: every round the whole model goes to each client (train and evaluate) and back
    model_bytes = rounds[1]["bytes_received"] / len(rounds[1]["clients"])
    assert model_bytes > 0
    assert all(r["bytes_sent"] == 2 * r["bytes_received"] for r in rounds[1:])
