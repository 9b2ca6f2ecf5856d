"""Partial-layer aggregation: which layers travel, presets, barrier-aware choice, plug-ins."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedbarrier.config import load_config
from fedbarrier.errors import UserError
from fedbarrier.fl.client_app import compose_state
from fedbarrier.fl.protocol import SHARED_LAYERS
from strategies import build_strategy
from strategies.barrier_aware import BarrierAwareFedAvg
from strategies.layerwise import LayerwiseFedAvg, preset_layers
from tests.conftest import FakeGrid

GROUPS = {"conv1": ["conv1.weight", "conv1.bias"], "conv2": ["conv2.weight"],
          "fc1": ["fc1.weight"], "fc2": ["fc2.weight", "fc2.bias"]}
KEYS = [k for keys in GROUPS.values() for k in keys]


def arrays():
    return ArrayRecord({k: Array.from_torch_tensor(torch.full((2,), float(i)))
                        for i, k in enumerate(KEYS)})


@pytest.mark.parametrize("name, expected", [
    ("fedper", ["conv1", "conv2", "fc1"]),
    ("lg-fedavg", ["fc2"]),
    ("local", []),
    ("shallow:2", ["conv1", "conv2"]),
    ("deep:3", ["conv2", "fc1", "fc2"]),
])
def test_presets_name_the_shared_layers(name, expected):
    assert preset_layers(name, GROUPS) == expected


def test_only_shared_layers_travel_and_the_config_names_them(task_identity):
    strategy = LayerwiseFedAvg(GROUPS, ["conv2", "fc2"], min_available_nodes=2, min_train_nodes=2)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(1, arrays(), config, FakeGrid([7, 9])))
    assert len(messages) == 2
    sent = messages[0].content["arrays"]
    assert sorted(sent) == ["conv2.weight", "fc2.bias", "fc2.weight"]
    assert list(messages[0].content["config"][SHARED_LAYERS]) == ["conv2", "fc2"]
    assert dict(config) == {"lr": 0.1}  # the caller's config is not modified


def test_compose_state_never_takes_personal_layers_from_the_server():
    initial = {k: torch.zeros(1) for k in KEYS}
    own = {k: torch.ones(1) for k in KEYS}
    received = {"conv1.weight": torch.full((1,), 5.0), "conv1.bias": torch.full((1,), 5.0)}
    state = compose_state(received, own, initial)
    assert state["conv1.weight"].item() == 5.0
    assert all(state[k].item() == 1.0 for k in KEYS if not k.startswith("conv1"))
    # a client that never trained starts personal layers from the initialization
    assert compose_state(received, None, initial)["fc2.weight"].item() == 0.0


def record(barriers):
    return {"split": "train", "per_layer": {"loss": {n: {"mean": b, "max": b}
                                                     for n, b in barriers.items()}}}


def test_barrier_aware_shares_low_barrier_layers_with_hysteresis():
    s = BarrierAwareFedAvg(GROUPS, threshold=0.1, margin=0.02)
    assert s.shared_layers(1) == list(GROUPS)  # no measurement yet: plain FedAvg
    s.observe(record({"conv1": 0.05, "conv2": 0.11, "fc1": 0.13, "fc2": 0.5}))
    # shared layers stay shared up to 0.12
    assert s.shared_layers(2) == ["conv1", "conv2"]
    assert s.shared_layers(2) == ["conv1", "conv2"]  # stable within a round
    s.observe(record({"conv1": 0.05, "conv2": 0.09, "fc1": 0.09, "fc2": 0.07}))
    # personal layers come back only below 0.08
    assert s.shared_layers(3) == ["conv1", "conv2", "fc2"]
    assert s.history == {1: list(GROUPS), 2: ["conv1", "conv2"], 3: ["conv1", "conv2", "fc2"]}


def test_barrier_aware_ignores_other_splits():
    s = BarrierAwareFedAvg(GROUPS, split="test")
    s.observe(record({n: 9.0 for n in GROUPS}))
    assert s.shared_layers(2) == list(GROUPS)


def cfg(*overrides):
    return load_config(None, list(overrides)).strategy


def test_build_strategy_presets_and_errors():
    assert isinstance(build_strategy(cfg("strategy.name=fedper"), 10, GROUPS), LayerwiseFedAvg)
    s = build_strategy(cfg("strategy.name=layers", 'strategy.layers=["fc.*"]'), 10, GROUPS)
    assert s.shared_layers(1) == ["fc1", "fc2"]
    with pytest.raises(UserError, match="K must be between 1 and the model's 4 layers"):
        build_strategy(cfg("strategy.name=deep:5"), 10, GROUPS)
    with pytest.raises(UserError, match="needs strategy.layers"):
        build_strategy(cfg("strategy.name=layers"), 10, GROUPS)
    with pytest.raises(UserError, match="not allowed"):
        build_strategy(cfg("strategy.name=fedsomething"), 10, GROUPS)


def test_plugin_errors_are_one_line():
    with pytest.raises(UserError, match="cannot import 'no_such_module'"):
        build_strategy(cfg("strategy.name=no_such_module:X"), 10, GROUPS)
    with pytest.raises(UserError, match="no Flower Strategy class named 'Nope'"):
        build_strategy(cfg("strategy.name=strategies.layerwise:Nope"), 10, GROUPS)


def test_plugin_by_dotted_path_gets_groups_when_it_asks():
    s = build_strategy(cfg("strategy.name=tests.strategies.plugin:HeadOnly"), 10, GROUPS)
    assert s.shared_layers(1) == ["fc2"]


def test_barrier_aware_state_round_trips_for_resume():
    s = BarrierAwareFedAvg(GROUPS, threshold=0.1, margin=0.02)
    s.shared_layers(1)
    s.observe(record({"conv1": 0.05, "conv2": 0.11, "fc1": 0.13, "fc2": 0.5}))
    s.shared_layers(2)
    import json

    restored = BarrierAwareFedAvg(GROUPS, threshold=0.1, margin=0.02)
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert restored.history == s.history
    s.observe(record({"conv1": 0.05, "conv2": 0.09, "fc1": 0.07, "fc2": 0.07}))
    restored.observe(record({"conv1": 0.05, "conv2": 0.09, "fc1": 0.07, "fc2": 0.07}))
    assert restored.shared_layers(3) == s.shared_layers(3)
