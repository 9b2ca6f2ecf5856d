"""The Radon machine: Radon points with hand-derived values, the iterated machine, the strategy's
aggregation rule and its errors, and a one-shot federation of logistic regressions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedbarrier.config import load_config
from fedbarrier.errors import UserError
from strategies import build_strategy
from strategies.radon import RadonMachine, iterated_radon_point, radon_height, radon_point
from tests.conftest import TINY, FakeGrid, reply

LINEAR = {"fc": ["fc.weight", "fc.bias"]}


@pytest.mark.parametrize("points, expected", [
    # R^1, r = 3: λ = (1, 1, -2) splits {-1, 1} from {0}; in R^1 the Radon point is the median
    ([[-1.0], [1.0], [0.0]], [0.0]),
    ([[5.0], [-2.0], [7.0]], [5.0]),
    # R^2, r = 4: the diagonals of a square cross at its centre, λ = (1, -1, 1, -1)
    ([[0, 0], [1, 0], [1, 1], [0, 1]], [0.5, 0.5]),
    # a triangle and a point inside: (1, 1) = ½(0, 0) + ¼(4, 0) + ¼(0, 4), λ = (½, ¼, ¼, -1)
    ([[0, 0], [4, 0], [0, 4], [1, 1]], [1.0, 1.0]),
])
def test_radon_point_of_hand_derived_configurations(points, expected):
    # Execute
    point = radon_point(np.array(points, dtype=float))
    # Assert
    np.testing.assert_allclose(point, expected, atol=1e-12)


def test_radon_point_moves_with_affine_maps_and_leaves_the_input_alone():
    # Prepare
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))  # r = d + 2: the null vector is unique up to scale
    before = x.copy()
    a, b = rng.normal(size=(3, 3)), rng.normal(size=3)
    # Execute
    point, mapped = radon_point(x), radon_point(x @ a.T + b)
    # Assert
    np.testing.assert_allclose(mapped, point @ a.T + b, atol=1e-9)
    np.testing.assert_array_equal(x, before)


def test_radon_point_needs_d_plus_2_points():
    with pytest.raises(ValueError, match=r"r >= d \+ 2 = 4 points, got 3"):
        radon_point(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(r, d\) array"):
        radon_point(np.zeros(4))


def test_iterated_radon_point_is_the_median_of_medians_in_one_dimension():
    # Prepare: h = 2 levels of r = 3; each group's Radon point is its median: 0, 2, 5 -> 2
    points = np.array([-1, 1, 0, 1, 3, 2, 4, 6, 5], dtype=float)[:, None]
    # Execute / Assert
    assert iterated_radon_point(points, 3).tolist() == [2.0]
    assert radon_height(9, 3) == 2 and radon_height(8, 3) == 1 and radon_height(2, 3) == 0
    with pytest.raises(ValueError, match="r\\^h points"):
        iterated_radon_point(points[:8], 3)


def replies_of(points):
    """Linear-model replies whose (weight, bias) are the given 2-D points, nodes 10, 11, ..."""
    return [reply(10 + i, i, {"fc.weight": torch.tensor([[float(w)]]), "fc.bias": torch.tensor([float(b)])},
                  {"num-examples": 1 + i, "train_loss": 0.5})
            for i, (w, b) in enumerate(points)]


@pytest.mark.usefixtures("task_identity")
def test_strategy_aggregates_into_the_radon_point_not_the_average():
    # Prepare: d = 2 parameters, r = 4 clients at the corners of a rectangle weighted unevenly
    strategy = RadonMachine(LINEAR, height=1, num_clients=4, min_available_nodes=4,
                            min_train_nodes=4)
    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies_of([(0, 0), (2, 0), (2, 1), (0, 1)]))
    # Assert: the centre (1, 0.5), not the example-weighted mean (1.0, 0.7)
    state = arrays.to_torch_state_dict()
    assert state["fc.weight"].item() == pytest.approx(1.0) and state["fc.bias"].item() == pytest.approx(0.5)
    assert state["fc.weight"].dtype == torch.float32
    assert metrics["radon_r"] == 4 and metrics["radon_height"] == 1
    assert metrics["train_loss"] == pytest.approx(0.5)


@pytest.mark.usefixtures("task_identity")
def test_strategy_with_too_few_models_keeps_the_previous_model():
    strategy = RadonMachine(LINEAR, height=1, num_clients=4, min_available_nodes=4,
                            min_train_nodes=4)
    arrays, metrics = strategy.aggregate_train(1, replies_of([(0, 0), (2, 0), (2, 1)]))
    assert arrays is None and metrics["radon_height"] == 0


def cfg(*overrides):
    return load_config(None, list(overrides)).strategy


@pytest.mark.usefixtures("task_identity")
def test_radon_rejects_models_and_client_counts_it_cannot_handle():
    cnn = {"conv1": ["conv1.weight"], "conv2": ["conv2.weight"], "fc1": ["fc1.weight"],
           "fc2": ["fc2.weight"]}
    with pytest.raises(UserError, match="needs model.name = 'linear'.*r = d \\+ 2"):
        build_strategy(cfg("strategy.name=radon"), 12, cnn)
    with pytest.raises(UserError, match="num_clients = r\\^2 for an integer r; 12 is not"):
        build_strategy(cfg("strategy.name=radon", "strategy.radon_height=2"), 12, LINEAR)
    with pytest.raises(UserError, match="fraction_train = 1"):
        build_strategy(cfg("strategy.name=radon", "strategy.clients_per_round=3"), 4, LINEAR)
    # d = 4 + 1 = 5 parameters need r >= 7 models per group; 4 clients give r = 4
    strategy = build_strategy(cfg("strategy.name=radon"), 4, LINEAR)
    arrays = ArrayRecord({"fc.weight": torch.zeros(1, 4), "fc.bias": torch.zeros(1)})
    with pytest.raises(UserError, match="d = 5 parameters.*r >= d \\+ 2 = 7.*use 7\\^h clients"):
        strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(range(4)))


@pytest.mark.slow
def test_one_shot_radon_machine_of_logistic_regressions(tmp_path):
    """d = (4 + 1) x 2 = 10 parameters: r = 12 clients, h = 1, one round; the global model is the
    Radon point of the 12 saved client models."""
    from fedbarrier.fl.simulation import run_experiment

    cfg = load_config(None, TINY + [
        "model.name=linear", "strategy.name=radon", "data.synthetic_shape=[1, 2, 2]",
        "data.synthetic_classes=2", "data.synthetic_noise=1.5", "data.num_clients=12",
        "data.partition=iid", "train.rounds=1", "train.local_epochs=20", "train.lr=0.1",
        "output.save_client_models=true", "barriers.families=[\"full\"]"])
    run_experiment(cfg, tmp_path / "run", progress=False)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = rounds[-1]
    assert last["round"] == 1 and last["radon_r"] == 12 and last["radon_height"] == 1
    assert last["clients"] == list(range(12))
    assert last["global_test_accuracy"] > rounds[0]["global_test_accuracy"]
    saved = tmp_path / "run" / "checkpoints" / "round-0001"
    points = np.stack([torch.cat([state["fc.weight"].ravel(), state["fc.bias"]]).double().numpy()
                       for state in (torch.load(saved / f"client-{k}.pt", weights_only=True)
                                     for k in range(12))])
    glob = torch.load(saved / "global.pt", weights_only=True)
    np.testing.assert_allclose(torch.cat([glob["fc.weight"].ravel(), glob["fc.bias"]]).numpy(),
                               radon_point(points), rtol=1e-5, atol=1e-6)
