"""The evaluator scores variants exactly like a plain forward pass, with or without sharing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fedbarrier.learn.models import build_model
from fedbarrier.measure.barriers import measure_barriers
from fedbarrier.measure.evaluator import ModelEvaluator
from fedbarrier.measure.layers import layer_groups, model_stages


def plain_scores(model, states, x, y):
    out = []
    for state in states:
        m = copy.deepcopy(model)
        m.load_state_dict(state)
        m.eval()
        with torch.no_grad():
            logits = m(x)
        out.append({"loss": float(F.cross_entropy(logits, y)),
                    "error": 100.0 - 100.0 * float((logits.argmax(1) == y).float().mean())})
    return out


def client_states(name, shape, k=3):
    states = []
    for seed in range(k):
        torch.manual_seed(seed)
        states.append({n: t.detach().clone()
                       for n, t in build_model(name, shape, 5).state_dict().items()})
    return states


@pytest.mark.parametrize("name, shape", [("cnn", (1, 8, 8)), ("mlp", (1, 8, 8)),
                                         ("resnet18", (3, 16, 16))])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("channels_last", [None, False])
def test_evaluator_matches_plain_forward(name, shape, share, channels_last):
    torch.manual_seed(0)
    model = build_model(name, shape, 5)
    x, y = torch.randn(37, *shape), torch.randint(0, 5, (37,))
    states = client_states(name, shape)
    evaluator = ModelEvaluator(model, x, y, stages=model_stages(model), share_activations=share,
                               batch_size=16, channels_last=channels_last)
    assert evaluator.channels_last == (name != "mlp" and channels_last is None)
    got = evaluator(states)
    want = plain_scores(model, states, x, y)
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], abs=1e-5)
        assert g["error"] == pytest.approx(w["error"], abs=1e-4)  # the reference averages in float32


def test_activation_sharing_saves_stage_calls_and_gives_same_barriers():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model("cnn", shape, 5)
    x, y = torch.randn(50, *shape), torch.randint(0, 5, (50,))
    stages = model_stages(model)
    groups = layer_groups(model, x[:2])
    states = client_states("cnn", shape)
    shared = ModelEvaluator(model, x, y, stages=stages, share_activations=True)
    plain = ModelEvaluator(model, x, y, stages=stages, share_activations=False)
    a = measure_barriers(states, [1, 2, 3], groups, shared)
    b = measure_barriers(states, [1, 2, 3], groups, plain)
    for layer in groups:
        assert a.per_layer["loss"][layer].mean == pytest.approx(b.per_layer["loss"][layer].mean,
                                                                abs=1e-5)
    assert a.full["error"] == pytest.approx(b.full["error"])
    # without sharing: every stage of every variant; with it: strictly fewer stage calls
    assert plain.forward_calls == a.num_evaluated
    assert shared.stage_calls < a.num_evaluated * len(stages)


def test_evaluator_restores_training_mode():
    model = build_model("cnn", (1, 8, 8), 3)
    model.train()
    ev = ModelEvaluator(model, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    ev([model.state_dict()])
    assert model.training


def test_channels_last_hooks_do_not_outlive_a_call():
    """The evaluator's module may be shared (the offline tools reuse one): no hook may stay."""
    model = build_model("cnn", (1, 8, 8), 3)
    ev = ModelEvaluator(model, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert ev.channels_last
    ev([model.state_dict()])
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad():
        assert model.conv2(torch.randn(2, model.conv2.in_channels, 4, 4)).is_contiguous()
