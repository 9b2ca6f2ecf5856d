"""Local barriers (BARRIERS.md, Version 2) with hand-computed values."""

from __future__ import annotations

import json

import pytest
import torch

from fedbarrier.learn.models import build_model
from fedbarrier.measure.barriers import average_states, measure_barriers
from fedbarrier.measure.evaluator import ModelEvaluator
from fedbarrier.measure.layers import layer_groups, model_stages
from fedbarrier.measure.local import local_barriers, summarize_local
from tests.test_barriers import deep_linear_evaluator as deep_linear

# The deep linear network of BARRIERS.md: f(x) = w2 * w1 * x, squared loss.
GROUPS = {"w1": ["w1.weight"], "w2": ["w2.weight"]}


def linear_state(w1: float, w2: float) -> dict[str, torch.Tensor]:
    return {"w1.weight": torch.tensor([w1], dtype=torch.float64),
            "w2.weight": torch.tensor([w2], dtype=torch.float64)}



A, B = linear_state(2.0, 0.5), linear_state(0.5, 2.0)
AVERAGE = average_states([A, B], [0.5, 0.5])  # (1.25, 1.25)


def test_hand_checked_example_of_barriers_md():
    # D_A = {(1, 1)}, here twice (one example has no se): the means are those of one example
    rec = local_barriers(A, AVERAGE, GROUPS, deep_linear([(1.0, 1.0), (1.0, 1.0)]),
                         metrics=("loss",))
    assert rec["n"] == 2
    assert rec["endpoint"] == {"loss": 0.0}
    assert rec["per_layer"]["loss"] == {"w1": 0.140625, "w2": 2.25}
    assert rec["full"]["loss"] == 0.31640625
    # shallow {w1}, {w1, w2}; deep {w2}, {w2, w1}
    assert rec["shallow"]["loss"] == [0.140625, 0.31640625]
    assert rec["deep"]["loss"] == [2.25, 0.31640625]
    # identical examples: every delta is constant, se exactly 0
    assert rec["full_se"]["loss"] == 0.0
    assert rec["per_layer_se"]["loss"] == {"w1": 0.0, "w2": 0.0}
    assert rec["shallow_se"]["loss"] == [0.0, 0.0] and rec["deep_se"]["loss"] == [0.0, 0.0]
    json.dumps(rec)


def test_values_and_se_on_a_sample_where_the_endpoint_is_not_perfect():
    # D_A = {(1, 1), (1, 0)}: A (c = 1) has losses (0, 1)
    rec = local_barriers(A, AVERAGE, GROUPS, deep_linear([(1.0, 1.0), (1.0, 0.0)]),
                         metrics=("loss",))
    assert rec["endpoint"]["loss"] == 0.5
    # full c = 1.5625: losses (0.31640625, 2.44140625), delta (0.31640625, 1.44140625)
    assert rec["full"]["loss"] == 0.87890625
    # n = 2: se = sd (ddof 1) / sqrt 2 = |delta_1 - delta_2| / 2
    assert rec["full_se"]["loss"] == pytest.approx(0.5625, rel=1e-15)
    # w1 averaged: c = 0.625, losses (0.140625, 0.390625), delta (0.140625, -0.609375)
    assert rec["per_layer"]["loss"]["w1"] == -0.234375
    assert rec["per_layer_se"]["loss"]["w1"] == pytest.approx(0.375, rel=1e-15)
    # w2 averaged: c = 2.5, losses (2.25, 6.25), delta (2.25, 5.25)
    assert rec["per_layer"]["loss"]["w2"] == 3.75
    assert rec["per_layer_se"]["loss"]["w2"] == pytest.approx(1.5, rel=1e-15)


def test_client_b_sees_the_mirror_image():
    rec = local_barriers(B, AVERAGE, GROUPS, deep_linear([(1.0, 1.0), (1.0, 1.0)]),
                         metrics=("loss",))
    assert rec["per_layer"]["loss"] == {"w1": 2.25, "w2": 0.140625}
    assert rec["full"]["loss"] == 0.31640625


def test_fewer_than_two_examples_is_an_error():
    with pytest.raises(ValueError, match="2 examples"):
        local_barriers(A, AVERAGE, GROUPS, deep_linear([(1.0, 1.0)]), metrics=("loss",))
    model = build_model("mlp", (1, 4, 4), 3)
    state = model.state_dict()
    one = ModelEvaluator(model, torch.randn(1, 1, 4, 4), torch.tensor([0]))
    calls = []

    def spy(states):
        calls.append(len(states))
        return one(states)

    spy.num_examples = 1
    with pytest.raises(ValueError, match="2 examples"):
        local_barriers(state, state, layer_groups(model, torch.randn(2, 1, 4, 4)), spy)
    assert calls == []  # refused before any model is scored


def test_an_evaluator_without_per_example_values_is_an_error():
    def means_only(states):
        return [{"loss": 0.0} for _ in states]

    with pytest.raises(ValueError, match="per-example"):
        local_barriers(A, AVERAGE, GROUPS, means_only, metrics=("loss",))


def test_the_average_may_list_its_keys_in_another_order_but_not_other_keys():
    evaluate = deep_linear([(1.0, 1.0), (1.0, 0.0)])
    reordered = {"w2.weight": AVERAGE["w2.weight"], "w1.weight": AVERAGE["w1.weight"]}
    assert (local_barriers(A, reordered, GROUPS, evaluate, metrics=("loss",))
            == local_barriers(A, AVERAGE, GROUPS, evaluate, metrics=("loss",)))
    with pytest.raises(ValueError, match="keys"):
        local_barriers(A, {"w1.weight": AVERAGE["w1.weight"]}, GROUPS, evaluate, metrics=("loss",))


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="families"):
        local_barriers(A, AVERAGE, GROUPS, deep_linear([(1.0, 1.0)] * 2), families=("curve",))


def test_identical_variants_are_scored_once():
    calls = []
    inner = deep_linear([(1.0, 1.0), (2.0, 1.0)])

    def counting(states):
        calls.append(len(states))
        return inner(states)

    rec = local_barriers(A, AVERAGE, GROUPS, counting, metrics=("loss",))
    # endpoint, full, {w1}, {w2}: shallow/deep sets are one of these for L = 2
    assert calls == [4] and rec["num_evaluated"] == 4
    assert set(rec) == {"n", "layers", "families", "endpoint", "full", "full_se", "per_layer",
                        "per_layer_se", "shallow", "shallow_se", "deep", "deep_se", "evaluated",
                        "num_evaluated"}
    only_full = local_barriers(A, AVERAGE, GROUPS, inner, metrics=("loss",), families=("full",))
    assert "per_layer" not in only_full and "shallow" not in only_full


def client_states(k=3, shape=(1, 8, 8)):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append({n: t.detach().clone() for n, t in build_model("cnn", shape, 5).state_dict().items()})
    return out


def test_on_the_server_sample_local_barriers_are_the_self_referenced_values_exactly():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model("cnn", shape, 5)
    x, y = torch.randn(40, *shape), torch.randint(0, 5, (40,))
    groups, stages = layer_groups(model, x[:2]), model_stages(model)
    states, p = client_states(), [0.5, 0.3, 0.2]
    evaluator = ModelEvaluator(model, x, y, stages=stages, batch_size=16)
    server = measure_barriers(states, p, groups, evaluator, families=("full", "per_layer",
                                                                      "cumulative"))
    average = average_states(states, p)
    for k in range(3):
        rec = local_barriers(states[k], average, groups, evaluator)
        for m in ("loss", "error"):
            assert rec["endpoint"][m] == server.endpoint[m][k]
            assert rec["full"][m] == server.evaluated["full"][m] - server.endpoint[m][k]
            for layer in groups:
                assert rec["per_layer"][m][layer] == server.per_layer[m][layer].self_referenced[k]
                assert (rec["per_layer_se"][m][layer]
                        == server.per_layer[m][layer].se["self_referenced"][k])
            assert rec["shallow"][m] == [s.self_referenced[k] for s in server.shallow[m]]
            assert rec["deep"][m] == [s.self_referenced[k] for s in server.deep[m]]
            assert rec["deep_se"][m] == [s.se["self_referenced"][k] for s in server.deep[m]]


def test_activation_sharing_is_used_for_local_variants():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    model = build_model("cnn", shape, 5)
    x, y = torch.randn(20, *shape), torch.randint(0, 5, (20,))
    groups, stages = layer_groups(model, x[:2]), model_stages(model)
    states = client_states(2)
    average = average_states(states, [1, 1])
    shared = ModelEvaluator(model, x, y, stages=stages, share_activations=True)
    plain = ModelEvaluator(model, x, y, stages=stages, share_activations=False)
    a = local_barriers(states[0], average, groups, shared)
    b = local_barriers(states[0], average, groups, plain)
    assert plain.forward_calls == a["num_evaluated"]
    assert shared.stage_calls < a["num_evaluated"] * len(stages)
    for layer in groups:
        assert a["per_layer"]["loss"][layer] == pytest.approx(b["per_layer"]["loss"][layer],
                                                              abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Summaries across clients
# ---------------------------------------------------------------------------------------------
def fake_record(full: float, w1: float, shallow: list[float]) -> dict:
    return {"n": 10, "layers": ["w1", "w2"], "families": ["full", "per_layer", "cumulative"],
            "endpoint": {"loss": 0.0}, "full": {"loss": full}, "full_se": {"loss": 0.1},
            "per_layer": {"loss": {"w1": w1, "w2": 0.0}},
            "per_layer_se": {"loss": {"w1": 0.1, "w2": 0.1}},
            "shallow": {"loss": shallow}, "shallow_se": {"loss": [0.1, 0.1]}}


def test_summary_weighted_mean_max_and_linear_quantiles():
    per_client = {7: fake_record(1.0, 4.0, [1.0, 0.0]), 3: fake_record(2.0, 2.0, [0.0, 0.0]),
                  9: fake_record(4.0, 1.0, [0.0, 0.0])}
    out = summarize_local(per_client, {3: 10, 7: 10, 9: 20, 11: 40})  # 11 was skipped
    assert out["clients"] == [7, 3, 9]
    assert out["weights"] == [0.25, 0.25, 0.5]
    full = out["full"]["loss"]
    # mean 0.25 * 1 + 0.25 * 2 + 0.5 * 4 = 2.75; linear quantiles of (1, 2, 4):
    # q10 at position 0.2 -> 1.2, q50 -> 2, q90 at position 1.8 -> 2 + 0.8 * 2 = 3.6
    assert full["mean"] == 2.75 and full["max"] == 4.0 and full["q50"] == 2.0
    assert full["q10"] == pytest.approx(1.2, rel=1e-15)
    assert full["q90"] == pytest.approx(3.6, rel=1e-15)
    # per layer: (4, 2, 1) weighted (1/4, 1/4, 1/2): 1 + 0.5 + 0.5 = 2
    assert out["per_layer"]["loss"]["w1"]["mean"] == 2.0
    assert out["per_layer"]["loss"]["w1"]["max"] == 4.0
    assert out["shallow"]["loss"][0]["mean"] == 0.25
    assert out["shallow"]["loss"][1]["max"] == 0.0
    assert out["endpoint"]["loss"]["mean"] == 0.0
    assert "full_se" not in out
    json.dumps(out)


def test_summary_rejects_mismatched_or_unweighted_clients():
    with pytest.raises(ValueError, match="weight"):
        summarize_local({1: fake_record(1.0, 1.0, [0.0, 0.0])}, {2: 1.0})
    other = fake_record(1.0, 1.0, [0.0, 0.0])
    other["layers"] = ["w2", "w1"]
    with pytest.raises(ValueError, match="layers"):
        summarize_local({1: fake_record(1.0, 1.0, [0.0, 0.0]), 2: other}, {1: 1, 2: 1})
    with pytest.raises(ValueError, match="no local"):
        summarize_local({}, {})
