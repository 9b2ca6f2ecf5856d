"""aligned-fedavg: models aligned to the largest client by weight matching, then averaged."""

from __future__ import annotations

import torch

from fedbarrier.config import load_config
from fedbarrier.learn.models import build_model
from fedbarrier.measure.alignment import apply_permutation, permutation_spec
from strategies import build_strategy
from strategies.aligned import AlignedFedAvg
from tests.conftest import reply

SHAPE = (1, 8, 8)


def model_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in build_model("cnn", SHAPE, 4).state_dict().items()}


def permuted(state, seed):
    spec = permutation_spec("cnn", state)
    g = torch.Generator().manual_seed(seed)
    return apply_permutation(spec, {n: torch.randperm(k, generator=g) for n, k in spec.sizes.items()},
                             state)


def aggregate(strategy, states, examples):
    replies = [reply(node, node, state, {"num-examples": n, "train_loss": 1.0})
               for node, (state, n) in enumerate(zip(states, examples))]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return arrays.to_torch_state_dict(), metrics


def test_permuted_copies_average_to_the_model_itself_where_fedavg_mixes_units(task_identity):
    a = model_state(0)
    states = [permuted(a, 1), a, permuted(a, 2)]  # the same function three times; a is the largest
    strategy = build_strategy(load_config(None, ["strategy.name=aligned-fedavg"]).strategy, 3, {})
    assert isinstance(strategy, AlignedFedAvg)
    average, metrics = aggregate(strategy, states, [10, 30, 20])
    for key, tensor in a.items():
        torch.testing.assert_close(average[key], tensor, rtol=0, atol=1e-6)
    assert metrics["align_seconds"] > 0 and metrics["train_loss"] == 1.0
    plain, _ = aggregate(build_strategy(load_config(None, []).strategy, 3, {}), states, [10, 30, 20])
    assert (plain["conv1.weight"] - a["conv1.weight"]).abs().max() > 0.01  # FedAvg mixes units


def test_the_average_of_aligned_models_is_weighted_and_in_the_references_basis(task_identity):
    from fedbarrier.measure.alignment import weight_matching
    from fedbarrier.seeds import Stream, derive_seed

    a, b = model_state(0), model_state(1)
    average, _ = aggregate(AlignedFedAvg(), [a, b], [3, 1])  # a is the reference (weight 3/4)
    spec = permutation_spec("cnn", a)
    perms = weight_matching(spec, a, b, seed=derive_seed(0, Stream.ALIGNMENT, 1))  # round 1
    b_aligned = apply_permutation(spec, perms, b)
    assert any((perms[n] != torch.arange(len(perms[n]))).any() for n in perms)  # it did permute
    for key in a:
        torch.testing.assert_close(average[key], 0.75 * a[key] + 0.25 * b_aligned[key])

    def distance(state):
        return sum(float(((state[k] - a[k]) ** 2).sum()) for k in a)
    assert distance(average) < distance({k: 0.75 * a[k] + 0.25 * b[k] for k in a})
