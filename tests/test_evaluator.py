"""The evaluator scores variants exactly like a plain forward pass, with or without sharing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedbarrier.learn.models import build_model
from fedbarrier.measure import evaluator as evaluator_module
from fedbarrier.measure.barriers import average_states, measure_barriers
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
                    "error": 100.0 - 100.0 * float((logits.argmax(1) == y).float().mean()),
                    "examples": {"loss": F.cross_entropy(logits, y, reduction="none").double().numpy(),
                                 "error": 100.0 * (logits.argmax(1) != y).double().numpy()}})
    return out


def client_states(name, shape, k=3):
    states = []
    for seed in range(k):
        torch.manual_seed(seed)
        states.append({n: t.detach().clone()
                       for n, t in build_model(name, shape, 5).state_dict().items()})
    return states


@pytest.mark.parametrize("name, shape", [("cnn", (1, 8, 8)), ("mlp", (1, 8, 8)),
                                         ("resnet18", (3, 8, 8))])
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
        # per-example values, in the order of y, across batches
        assert g["examples"]["loss"].shape == (37,)
        np.testing.assert_allclose(g["examples"]["loss"], w["examples"]["loss"], atol=1e-5)
        np.testing.assert_array_equal(g["examples"]["error"], w["examples"]["error"])
        assert g["examples"]["loss"].mean() == pytest.approx(g["loss"], abs=1e-6)
        assert g["examples"]["error"].mean() == pytest.approx(g["error"], abs=1e-9)


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


def test_means_are_bit_for_bit_those_of_summed_cross_entropy():
    """Per-example values come on top: the means are still v1's batch sums of
    ``F.cross_entropy(reduction="sum")`` accumulated in float64 (recorded numbers unchanged)."""
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 5).eval()
    x, y = torch.randn(37, 1, 8, 8) * 3, torch.randint(0, 5, (37,))
    states = client_states("mlp", (1, 8, 8))
    got = ModelEvaluator(model, x, y, share_activations=False, batch_size=16)(states)
    for state, g in zip(states, got):
        total, hits = 0.0, 0.0
        for start in range(0, 37, 16):
            with torch.inference_mode():
                logits = torch.func.functional_call(model, state, (x[start:start + 16],))
            total += float(F.cross_entropy(logits.float(), y[start:start + 16],
                                           reduction="sum").double())
            hits += float((logits.argmax(1) == y[start:start + 16]).sum().double())
        assert g["loss"] == total / 37
        assert g["error"] == 100.0 - 100.0 * hits / 37


@pytest.mark.parametrize("share", [True, False])
def test_per_example_values_cost_no_extra_forward_pass_and_one_read_back(share, monkeypatch):
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model("cnn", shape, 5)
    x, y = torch.randn(50, *shape), torch.randint(0, 5, (50,))
    states = client_states("cnn", shape)
    average = average_states(states, [1, 1, 1])
    variants = [*states, average, {**states[0], "fc2.weight": average["fc2.weight"]}]
    reads = []
    real = evaluator_module._read_back
    monkeypatch.setattr(evaluator_module, "_read_back",
                        lambda *args: reads.append(1) or real(*args))
    with_examples = ModelEvaluator(model, x, y, stages=model_stages(model),
                                   share_activations=share, batch_size=16)
    without = ModelEvaluator(model, x, y, stages=model_stages(model), share_activations=share,
                             batch_size=16, per_example=False)
    a, b = with_examples(variants), without(variants)
    assert reads == [1, 1]  # one device-to-host transfer per call, for 4 batches
    assert with_examples.stage_calls == without.stage_calls
    assert with_examples.forward_calls == without.forward_calls
    assert all("examples" not in score for score in b)
    assert [(s["loss"], s["error"]) for s in a] == [(s["loss"], s["error"]) for s in b]


def test_evaluator_feeds_standard_errors_into_the_barriers():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model("cnn", shape, 5)
    x, y = torch.randn(30, *shape), torch.randint(0, 5, (30,))
    states, p = client_states("cnn", shape), [0.5, 0.25, 0.25]
    groups = layer_groups(model, x[:2])
    res = measure_barriers(states, p, groups, ModelEvaluator(model, x, y, stages=model_stages(model)),
                           families=("full", "per_layer"), defaults=[0, 2])
    plain = plain_scores(model, [*states, average_states(states, p)], x, y)
    for m in ("loss", "error"):
        reference = sum(w * s["examples"][m] for w, s in zip(p, plain[:3]))
        delta = plain[3]["examples"][m] - reference
        assert res.full_se[m] == pytest.approx(np.std(delta, ddof=1) / np.sqrt(30), rel=1e-4)
        assert res.per_layer[m][list(groups)[0]].se["mean"] > 0
