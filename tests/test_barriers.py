"""Barrier math against ../shared/docs/BARRIERS.md, with hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedbarrier.measure.barriers import (
    average_states,
    interpolate,
    layer_distances,
    measure_barriers,
    mix_layers,
)

# ---------------------------------------------------------------------------------------------
# The deep linear network of BARRIERS.md: f(x) = w2 * w1 * x, one example (x=1, y=1), squared loss.
# ---------------------------------------------------------------------------------------------
GROUPS = {"w1": ["w1.weight"], "w2": ["w2.weight"]}


def linear_state(w1: float, w2: float) -> dict[str, torch.Tensor]:
    return {"w1.weight": torch.tensor([w1], dtype=torch.float64),
            "w2.weight": torch.tensor([w2], dtype=torch.float64)}


def squared_loss_evaluator(states):
    out = []
    for s in states:
        f = float(s["w2.weight"] * s["w1.weight"] * 1.0)
        out.append({"loss": (f - 1.0) ** 2})
    return out


A = linear_state(2.0, 0.5)
B = linear_state(0.5, 2.0)


def test_deep_linear_full_barrier_matches_hand_checked_value():
    # Execute
    res = measure_barriers([A, B], [0.5, 0.5], GROUPS, squared_loss_evaluator,
                           metrics=("loss",))
    # Assert: endpoints both have loss 0, average (1.25, 1.25) gives f = 1.5625
    assert res.endpoint["loss"] == [0.0, 0.0]
    assert res.reference["loss"] == 0.0
    assert res.full["loss"] == pytest.approx(0.31640625, abs=1e-12)


def test_deep_linear_per_layer_barriers_per_default_client():
    res = measure_barriers([A, B], [0.5, 0.5], GROUPS, squared_loss_evaluator,
                           metrics=("loss",))
    layer1 = res.per_layer["loss"]["w1"]
    layer2 = res.per_layer["loss"]["w2"]
    # default A: (1.25, 0.5) -> 0.140625; default B: (1.25, 2) -> f = 2.5 -> 2.25
    assert layer1.per_default == pytest.approx([0.140625, 2.25])
    # default A: (2, 1.25) -> f = 2.5 -> 2.25; default B: (0.5, 1.25) -> 0.140625
    assert layer2.per_default == pytest.approx([2.25, 0.140625])
    assert layer1.mean == pytest.approx((0.140625 + 2.25) / 2)
    assert layer1.max == pytest.approx(2.25)


def test_deep_linear_cumulative_barriers():
    res = measure_barriers([A, B], [0.5, 0.5], GROUPS, squared_loss_evaluator,
                           metrics=("loss",))
    shallow = res.shallow["loss"]
    deep = res.deep["loss"]
    # shallow S_1 = {w1} is the per-layer barrier of w1; S_2 = all layers = full barrier
    assert shallow[0].per_default == pytest.approx([0.140625, 2.25])
    assert shallow[1].per_default == pytest.approx([0.31640625, 0.31640625])
    # deep S_1 = {w2}
    assert deep[0].per_default == pytest.approx([2.25, 0.140625])
    assert deep[1].mean == pytest.approx(res.full["loss"])


def test_single_layer_cut_is_convex_for_linear_network():
    # Along the cut of layer 1 from A, the output is linear in alpha, so squared loss is convex.
    alphas = [i / 20 for i in range(21)]
    losses = [
        squared_loss_evaluator([interpolate(A, B, a, keys={"w1.weight"})])[0]["loss"]
        for a in alphas
    ]
    second_diffs = [losses[i - 1] - 2 * losses[i] + losses[i + 1] for i in range(1, 20)]
    assert min(second_diffs) >= -1e-12
    # while the full-model path is not convex (it has a bump: barrier > 0 at alpha = 1/2)
    full = [squared_loss_evaluator([interpolate(A, B, a)])[0]["loss"] for a in alphas]
    assert full[10] > max(full[0], full[20])


def test_curve_is_zero_at_both_ends_and_equals_full_barrier_at_half():
    res = measure_barriers([A, B], [0.5, 0.5], GROUPS, squared_loss_evaluator,
                           metrics=("loss",), curve_points=5)
    curve = res.curve["loss"]
    assert curve.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.barrier[0] == 0.0 and curve.barrier[-1] == 0.0
    assert curve.barrier[2] == pytest.approx(res.full["loss"])
    assert curve.max == pytest.approx(max(curve.barrier))


def test_curve_endpoints_are_the_client_models_themselves():
    # alpha = 0 and 1 must evaluate the endpoints, not a rounding-prone mixture
    seen = []

    def spy(states):
        seen.extend(states)
        return squared_loss_evaluator(states)

    measure_barriers([A, B], [0.5, 0.5], GROUPS, spy, metrics=("loss",), curve_points=3,
                     families=("curve",))
    assert any(s["w1.weight"] is A["w1.weight"] for s in seen)
    assert any(s["w1.weight"] is B["w1.weight"] for s in seen)


# ---------------------------------------------------------------------------------------------
# General properties
# ---------------------------------------------------------------------------------------------
def random_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 2, generator=g), "a.bias": torch.randn(3, generator=g),
            "b.weight": torch.randn(1, 3, generator=g), "b.bias": torch.randn(1, generator=g)}


AB_GROUPS = {"a": ["a.weight", "a.bias"], "b": ["b.weight", "b.bias"]}
X = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.3], [0.1, 0.1]])
Y = torch.tensor([[1.0], [-1.0], [0.5], [0.0]])


def mlp_evaluator(states):
    out = []
    for s in states:
        h = torch.relu(X @ s["a.weight"].T + s["a.bias"])
        pred = h @ s["b.weight"].T + s["b.bias"]
        mse = float(((pred - Y) ** 2).mean())
        out.append({"loss": mse, "error": 100.0 * float((pred.sign() != Y.sign()).float().mean())})
    return out


def test_identical_models_give_zero_barriers_everywhere():
    s = random_state(0)
    res = measure_barriers([s, dict(s), dict(s)], [0.2, 0.3, 0.5], AB_GROUPS, mlp_evaluator)
    for metric in ("loss", "error"):
        assert res.full[metric] == pytest.approx(0.0, abs=1e-6)
        for layer in AB_GROUPS:
            assert res.per_layer[metric][layer].max == pytest.approx(0.0, abs=1e-6)
        for entry in res.shallow[metric] + res.deep[metric]:
            assert entry.max == pytest.approx(0.0, abs=1e-6)


def test_two_clients_reduce_to_paper_two_model_formulas():
    a, b = random_state(1), random_state(2)
    res = measure_barriers([a, b], [0.5, 0.5], AB_GROUPS, mlp_evaluator, curve_points=3)
    la, lb = (m["loss"] for m in mlp_evaluator([a, b]))
    mid = mlp_evaluator([{k: (a[k] + b[k]) / 2 for k in a}])[0]["loss"]
    # paper: B = L((A + B)/2) - (L(A) + L(B))/2
    assert res.full["loss"] == pytest.approx(mid - (la + lb) / 2, abs=1e-6)
    assert res.curve["loss"].barrier[1] == pytest.approx(res.full["loss"], abs=1e-6)
    # layer b averaged with A as default: A's first layer, the midpoint of the second
    cut = {"a.weight": a["a.weight"], "a.bias": a["a.bias"],
           "b.weight": (a["b.weight"] + b["b.weight"]) / 2, "b.bias": (a["b.bias"] + b["b.bias"]) / 2}
    expected = mlp_evaluator([cut])[0]["loss"] - (la + lb) / 2
    assert res.per_layer["loss"]["b"].per_default[0] == pytest.approx(expected, abs=1e-6)


def test_p_weights_are_honoured():
    a, b = random_state(3), random_state(4)
    p = [0.8, 0.2]
    res = measure_barriers([a, b], p, AB_GROUPS, mlp_evaluator, families=("full", "per_layer"))
    la, lb = (m["loss"] for m in mlp_evaluator([a, b]))
    avg = {k: 0.8 * a[k] + 0.2 * b[k] for k in a}
    reference = 0.8 * la + 0.2 * lb
    assert res.reference["loss"] == pytest.approx(reference, abs=1e-6)
    assert res.full["loss"] == pytest.approx(mlp_evaluator([avg])[0]["loss"] - reference, abs=1e-6)
    per_default = res.per_layer["loss"]["a"].per_default
    assert res.per_layer["loss"]["a"].mean == pytest.approx(0.8 * per_default[0] + 0.2 * per_default[1])


def test_weights_proportional_to_counts_are_normalized():
    a, b = random_state(5), random_state(6)
    r1 = measure_barriers([a, b], [300, 100], AB_GROUPS, mlp_evaluator, families=("full",))
    r2 = measure_barriers([a, b], [0.75, 0.25], AB_GROUPS, mlp_evaluator, families=("full",))
    assert r1.full["loss"] == pytest.approx(r2.full["loss"])


def test_negative_barriers_are_kept_not_clipped():
    # Endpoints with bad loss whose average is better: the barrier must be negative.
    a = {"w1.weight": torch.tensor([0.0], dtype=torch.float64),
         "w2.weight": torch.tensor([1.0], dtype=torch.float64)}
    b = {"w1.weight": torch.tensor([2.0], dtype=torch.float64),
         "w2.weight": torch.tensor([1.0], dtype=torch.float64)}
    res = measure_barriers([a, b], [0.5, 0.5], GROUPS, squared_loss_evaluator, metrics=("loss",))
    assert res.full["loss"] == pytest.approx(0.0 - 1.0)


def test_subset_of_default_clients_renormalizes_mean():
    states = [random_state(i) for i in range(3)]
    p = [0.5, 0.3, 0.2]
    full = measure_barriers(states, p, AB_GROUPS, mlp_evaluator, families=("per_layer",))
    sub = measure_barriers(states, p, AB_GROUPS, mlp_evaluator, families=("per_layer",),
                           defaults=[1, 2])
    pd = full.per_layer["loss"]["a"].per_default
    own = full.per_layer["loss"]["a"].self_referenced
    assert sub.per_layer["loss"]["a"].per_default == pytest.approx(pd[1:])
    # BARRIERS.md v2: over a subset C the mean is sum_{d in C} p~_d B~_S^(d)
    assert sub.per_layer["loss"]["a"].mean == pytest.approx((0.3 * own[1] + 0.2 * own[2]) / 0.5)


def test_every_evaluated_model_is_recorded_and_barriers_recompute_from_it():
    states = [random_state(i) for i in range(3)]
    res = measure_barriers(states, [1, 1, 2], AB_GROUPS, mlp_evaluator, window=1,
                           random_orders=1, seed=3)
    rec = res.to_record()
    raw = rec["evaluated"]
    ref = sum(p * raw[f"endpoint/{k}"]["loss"] for k, p in enumerate([0.25, 0.25, 0.5]))
    assert rec["full"]["loss"] == pytest.approx(raw["full"]["loss"] - ref)
    assert rec["per_layer"]["loss"]["b"]["per_default"][2] == pytest.approx(
        raw["layer/b/d2"]["loss"] - ref)
    assert rec["shallow"]["loss"][0]["per_default"][1] == pytest.approx(
        raw["shallow/1/d1"]["loss"] - ref)
    assert "window" in rec and "random" in rec


def test_duplicate_variants_are_evaluated_once():
    states = [random_state(i) for i in range(2)]
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return mlp_evaluator(batch)

    res = measure_barriers(states, [0.5, 0.5], AB_GROUPS, counting, families=("full", "cumulative"))
    # endpoints 2 + full 1 + shallow k=1 (2 defaults) + deep k=1 (2 defaults); k=L is `full`
    assert sum(calls) == 2 + 1 + 2 + 2
    assert res.num_evaluated == 7


def test_mix_layers_keeps_tensor_identity_and_does_not_mutate():
    a, b = random_state(7), random_state(8)
    before = {k: v.clone() for k, v in a.items()}
    avg = average_states([a, b], [0.5, 0.5])
    mixed = mix_layers(a, avg, AB_GROUPS, ["b"])
    assert mixed["a.weight"] is a["a.weight"]
    assert mixed["b.weight"] is avg["b.weight"]
    assert all(torch.equal(a[k], before[k]) for k in a)


def test_bad_weights_and_mismatched_states_are_rejected():
    a, b = random_state(0), random_state(1)
    with pytest.raises(ValueError, match="weight"):
        measure_barriers([a, b], [1.0, -1.0], AB_GROUPS, mlp_evaluator)
    with pytest.raises(ValueError, match="keys"):
        measure_barriers([a, {"a.weight": a["a.weight"]}], [1, 1], AB_GROUPS, mlp_evaluator)


# ---------------------------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------------------------
def test_layer_distances_hand_computed():
    a = {"l.weight": torch.tensor([3.0, 0.0])}
    b = {"l.weight": torch.tensor([0.0, 4.0])}
    received = {"l.weight": torch.tensor([0.0, 0.0])}
    d = layer_distances([a, b], [0.5, 0.5], {"l": ["l.weight"]}, reference=received)
    # average (1.5, 2): |a - avg| = sqrt(1.5^2 + 2^2) = 2.5 = |b - avg|
    assert d["l"]["l2_to_avg"] == pytest.approx([2.5, 2.5])
    assert d["l"]["pairwise_l2"] == pytest.approx(5.0)
    assert d["l"]["pairwise_cos"] == pytest.approx(0.0)
    # cos(a, avg) = 3*1.5 / (3 * 2.5) = 0.6 ; cos(b, avg) = 8 / (4 * 2.5) = 0.8
    assert d["l"]["cos_to_avg"] == pytest.approx([0.6, 0.8])
    assert d["l"]["drift"] == pytest.approx([3.0, 4.0])
    assert d["model"]["pairwise_l2"] == pytest.approx(5.0)


def test_layer_distances_match_a_pairwise_loop():
    torch.manual_seed(0)
    states = [{"l.weight": torch.randn(6)} for _ in range(4)]
    states.append({"l.weight": torch.zeros(6)})  # a zero vector: its cosines are 0 by definition
    states.append({"l.weight": states[0]["l.weight"].clone()})  # identical to client 0
    d = layer_distances(states, [1, 2, 3, 4, 5, 6], {"l": ["l.weight"]})["l"]
    v = [s["l.weight"].double() for s in states]

    def cos(a, b):
        na, nb = float(a.norm()), float(b.norm())
        return float(a @ b) / (na * nb) if na and nb else 0.0

    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    assert d["pairwise_l2"] == pytest.approx(sum(float((v[i] - v[j]).norm()) for i, j in pairs) / 15)
    assert d["pairwise_cos"] == pytest.approx(sum(cos(v[i], v[j]) for i, j in pairs) / 15)
    avg = sum(w * x for w, x in zip([1, 2, 3, 4, 5, 6], v)) / 21
    assert d["cos_to_avg"] == pytest.approx([cos(x, avg) for x in v])
    assert d["cos_to_avg"][4] == 0.0
    one = layer_distances(states[:1], [1], {"l": ["l.weight"]})["l"]
    assert (one["pairwise_l2"], one["pairwise_cos"], one["l2_to_avg"]) == (0.0, 1.0, [0.0])


def test_model_distance_combines_layers():
    a = {"x.weight": torch.tensor([1.0]), "y.weight": torch.tensor([0.0])}
    b = {"x.weight": torch.tensor([0.0]), "y.weight": torch.tensor([1.0])}
    d = layer_distances([a, b], [0.5, 0.5], {"x": ["x.weight"], "y": ["y.weight"]})
    assert d["model"]["pairwise_l2"] == pytest.approx(math.sqrt(2))
    assert "drift" not in d["model"]


# ---------------------------------------------------------------------------------------------
# Version 2: self-referenced values, means over a subset of defaults, standard errors
# ---------------------------------------------------------------------------------------------
def deep_linear_evaluator(data):
    """The deep linear network's squared loss on ``data`` = [(x, y), ...], with per-example values."""

    def evaluate(states):
        out = []
        for s in states:
            c = float(s["w2.weight"] * s["w1.weight"])
            losses = [(c * x - y) ** 2 for x, y in data]
            out.append({"loss": sum(losses) / len(losses), "examples": {"loss": losses}})
        return out

    return evaluate


# Two examples: x = 1 with y = 1 and y = 0. A and B compute f(x) = x: losses (0, 1) each.
TWO = deep_linear_evaluator([(1.0, 1.0), (1.0, 0.0)])


def test_full_barrier_se_hand_computed():
    # average c = 1.5625: losses (0.31640625, 2.44140625); endpoints (0, 1) -> delta =
    # (0.31640625, 1.44140625); n = 2: sd (ddof 1) = |d1 - d2| / sqrt 2, se = |d1 - d2| / 2
    res = measure_barriers([A, B], [0.5, 0.5], GROUPS, TWO, metrics=("loss",))
    assert res.full["loss"] == 0.87890625
    assert res.full_se["loss"] == pytest.approx(0.5625, rel=1e-15)
    assert res.to_record()["full_se"] == {"loss": res.full_se["loss"]}


def test_layer_set_se_of_mean_is_se_of_the_weighted_delta_not_a_mean_of_ses():
    res = measure_barriers([A, B], [0.5, 0.5], GROUPS, TWO, metrics=("loss",),
                           families=("per_layer",))
    w1 = res.per_layer["loss"]["w1"]
    # default A (1.25, 0.5): c = 0.625, losses (0.140625, 0.390625); own (0, 1)
    #   -> delta_A = (0.140625, -0.609375), B~ = -0.234375, se 0.375
    # default B (1.25, 2): c = 2.5, losses (2.25, 6.25) -> delta_B = (2.25, 5.25), B~ = 3.75, se 1.5
    assert w1.self_referenced == [-0.234375, 3.75]
    assert w1.se["self_referenced"] == pytest.approx([0.375, 1.5], rel=1e-15)
    # mean delta = (1.1953125, 2.3203125): se 0.5625 (the mean of the two ses would be 0.9375)
    assert w1.mean == 1.7578125
    assert w1.se["mean"] == pytest.approx(0.5625, rel=1e-15)
    # endpoint-referenced: E per example = (0, 1), the same as each endpoint here
    assert w1.per_default == [-0.234375, 3.75]
    assert w1.se["per_default"] == pytest.approx([0.375, 1.5], rel=1e-15)


# K = 3, one example (1, 1), p = (1/2, 1/4, 1/4): A and B have loss 0, C = (1, 2) has loss 1.
C = linear_state(1.0, 2.0)
P3 = [0.5, 0.25, 0.25]


def test_self_referenced_values_hand_computed_for_three_clients():
    # average (1.375, 1.25); E = 1/4 * 1 = 0.25
    res = measure_barriers([A, B, C], P3, GROUPS, squared_loss_evaluator, metrics=("loss",),
                           families=("per_layer",))
    w1 = res.per_layer["loss"]["w1"]
    # layer 1 averaged: A (1.375, 0.5) -> c = 0.6875 -> 0.09765625; B and C (1.375, 2) -> 3.0625
    assert w1.per_default == [0.09765625 - 0.25, 3.0625 - 0.25, 3.0625 - 0.25]
    assert w1.self_referenced == [0.09765625, 3.0625, 2.0625]
    # every client a default: the mean is v1's p-weighted mean of B (bit for bit) ...
    assert w1.mean == (0.5 * (0.09765625 - 0.25) + 0.25 * 2.8125 + 0.25 * 2.8125) / 1.0
    # ... and the p-weighted mean of B~ is the same number (sum_d p_d L(theta_d) = E)
    assert 0.5 * 0.09765625 + 0.25 * 3.0625 + 0.25 * 2.0625 == w1.mean == 1.330078125
    # one example: no standard error
    assert w1.se == {"mean": None, "per_default": [None] * 3, "self_referenced": [None] * 3}


def test_subset_of_defaults_reports_the_self_referenced_mean():
    res = measure_barriers([A, B, C], P3, GROUPS, squared_loss_evaluator, metrics=("loss",),
                           families=("per_layer",), defaults=[1, 2])
    w1 = res.per_layer["loss"]["w1"]
    assert w1.per_default == [2.8125, 2.8125]
    assert w1.self_referenced == [3.0625, 2.0625]
    # p~ = (1/2, 1/2): sum p~ B~ = 2.5625, not the endpoint-referenced sum p~ B = 2.8125
    assert w1.mean == 2.5625
    assert w1.max == 2.8125
    assert res.to_record()["per_layer"]["loss"]["w1"]["mean"] == 2.5625


def test_subset_mean_over_all_layers_is_offset_from_the_full_barrier():
    # S = all layers: every variant is the average, B~^(d) = L(avg) - L(theta_d); over C = {B, C}
    # the mean is L(avg) - (0 + 1) / 2, while the full barrier is L(avg) - E = L(avg) - 0.25.
    res = measure_barriers([A, B, C], P3, GROUPS, squared_loss_evaluator, metrics=("loss",),
                           families=("full", "cumulative"), defaults=[1, 2])
    # average (1.375, 1.25): c = 1.71875 -> loss 0.71875^2 = 0.5166015625
    assert res.full["loss"] == 0.5166015625 - 0.25
    assert res.shallow["loss"][-1].mean == 0.5166015625 - 0.5
    assert res.shallow["loss"][-1].per_default == [0.5166015625 - 0.25] * 2


def mlp_evaluator_with_examples(states):
    out = []
    for s in states:
        h = torch.relu(X @ s["a.weight"].T + s["a.bias"])
        pred = (h @ s["b.weight"].T + s["b.bias"]).squeeze(1)
        sq = ((pred - Y.squeeze(1)) ** 2).double()
        wrong = 100.0 * (pred.sign() != Y.squeeze(1).sign()).double()
        out.append({"loss": float(sq.mean()), "error": float(wrong.mean()),
                    "examples": {"loss": sq.numpy(), "error": wrong.numpy()}})
    return out


def sample_se(delta):
    delta = [float(d) for d in delta]
    mean = sum(delta) / len(delta)
    return math.sqrt(sum((d - mean) ** 2 for d in delta) / (len(delta) - 1) / len(delta))


def test_every_se_matches_a_direct_computation_from_per_example_values():
    states = [random_state(i) for i in range(3)]
    p = [0.5, 0.3, 0.2]
    res = measure_barriers(states, p, AB_GROUPS, mlp_evaluator_with_examples, defaults=[0, 2],
                           curve_pair=(1, 2), curve_points=3)
    ex = {name: s["examples"]["loss"] for name, s in
          zip(["0", "1", "2"], mlp_evaluator_with_examples(states))}
    avg = average_states(states, p)
    e = sum(pk * ex[str(k)] for k, pk in enumerate(p))
    full = mlp_evaluator_with_examples([avg])[0]["examples"]["loss"]
    assert res.full_se["loss"] == pytest.approx(sample_se(full - e), rel=1e-12)
    layer = res.per_layer["loss"]["b"]
    mixed = {d: mlp_evaluator_with_examples([mix_layers(states[d], avg, AB_GROUPS, ["b"])])[0]
             ["examples"]["loss"] for d in (0, 2)}
    assert layer.se["per_default"] == pytest.approx([sample_se(mixed[d] - e) for d in (0, 2)],
                                                    rel=1e-12)
    assert layer.se["self_referenced"] == pytest.approx(
        [sample_se(mixed[d] - ex[str(d)]) for d in (0, 2)], rel=1e-12)
    weighted = (0.5 * (mixed[0] - ex["0"]) + 0.2 * (mixed[2] - ex["2"])) / 0.7
    assert layer.se["mean"] == pytest.approx(sample_se(weighted), rel=1e-12)
    # the deep cumulative k = 1 set is {b}: the same numbers
    assert res.deep["loss"][0].se == layer.se
    # curve between clients 1 and 2 at alpha = 1/2
    mid = mlp_evaluator_with_examples([interpolate(states[1], states[2], 0.5)])[0]["examples"]["loss"]
    curve_se = res.curve["loss"].se
    assert curve_se[1] == pytest.approx(sample_se(mid - 0.5 * ex["1"] - 0.5 * ex["2"]), rel=1e-12)
    assert curve_se[0] == curve_se[2] == 0.0


def test_all_defaults_keep_v1_values_and_subset_uses_self_referenced_mean():
    states = [random_state(i) for i in range(4)]
    p = [0.4, 0.1, 0.3, 0.2]
    every = measure_barriers(states, p, AB_GROUPS, mlp_evaluator_with_examples)
    p = every.weights  # normalized
    for metric in ("loss", "error"):
        for s in [*every.per_layer[metric].values(), *every.shallow[metric], *every.deep[metric]]:
            # v1: p-weighted mean of the endpoint-referenced values, bit for bit
            assert s.mean == sum(w * v for w, v in zip(p, s.per_default)) / sum(p)
            # and the p-weighted mean of the self-referenced values is the same number
            assert sum(w * v for w, v in zip(p, s.self_referenced)) == pytest.approx(s.mean,
                                                                                      abs=1e-9)
    sub = measure_barriers(states, p, AB_GROUPS, mlp_evaluator_with_examples, defaults=[1, 3])
    for metric in ("loss",):
        for name, s in sub.per_layer[metric].items():
            own = [every.per_layer[metric][name].self_referenced[d] for d in (1, 3)]
            assert s.self_referenced == own
            assert s.mean == pytest.approx((0.1 * own[0] + 0.2 * own[1]) / 0.3, abs=1e-12)
            old = (0.1 * s.per_default[0] + 0.2 * s.per_default[1]) / 0.3
            assert abs(s.mean - old) > 1e-6  # the endpoint-referenced mean is not what is reported


V1_TOP_KEYS = {"layers", "weights", "defaults", "endpoint", "reference", "full", "per_layer",
               "shallow", "deep", "curve", "evaluated", "num_evaluated", "window", "random"}


def test_record_keeps_every_v1_key_and_value_and_only_adds_documented_keys():
    states = [random_state(i) for i in range(3)]
    p = [0.25, 0.25, 0.5]
    rec = measure_barriers(states, [1, 1, 2], AB_GROUPS, mlp_evaluator_with_examples, window=1,
                           random_orders=1, seed=3, curve_points=3).to_record()
    assert set(rec) == V1_TOP_KEYS | {"full_se"}
    raw = rec["evaluated"]
    summaries = [*rec["per_layer"]["loss"].values(), *rec["shallow"]["loss"], *rec["deep"]["loss"],
                 *rec["window"]["loss"], *rec["random"]["loss"][0]]
    names = ([f"layer/{layer}" for layer in AB_GROUPS] + [f"shallow/{k}" for k in (1, 2)]
             + [f"deep/{k}" for k in (1, 2)] + ["window/1", "window/2"]
             + [f"random0/{k}" for k in (1, 2)])
    for metric in ("loss", "error"):
        ref = sum(w * raw[f"endpoint/{k}"][metric] for k, w in enumerate(p))
        assert rec["reference"][metric] == ref
        assert rec["full"][metric] == raw["full"][metric] - ref
        for s, name in zip([*rec["per_layer"][metric].values(), *rec["shallow"][metric],
                            *rec["deep"][metric], *rec["window"][metric],
                            *rec["random"][metric][0]], names):
            values = [raw[f"{name}/d{d}"][metric] - ref for d in range(3)]
            assert set(s) == {"per_default", "mean", "max", "self_referenced", "se"}
            assert s["per_default"] == values
            assert s["mean"] == sum(w * v for w, v in zip(p, values)) / sum(p)
            assert s["max"] == max(values)
            assert set(s["se"]) == {"mean", "per_default", "self_referenced"}
    assert len(summaries) == len(names)
    assert set(rec["curve"]["loss"]) == {"pair", "alphas", "values", "barrier", "max", "se"}
    json.dumps(rec)  # JSON-ready: plain floats, no numpy scalars


def test_se_is_none_without_per_example_values():
    res = measure_barriers([random_state(0), random_state(1)], [1, 1], AB_GROUPS, mlp_evaluator,
                           curve_points=3)
    assert res.full_se == {"loss": None, "error": None}
    assert res.per_layer["error"]["a"].se["mean"] is None
    assert res.curve["loss"].se == [None] * 3


def test_per_example_values_of_different_lengths_are_rejected():
    def ragged(states):
        return [{"loss": 0.0, "examples": {"loss": [0.0] * (2 + i)}} for i in range(len(states))]

    with pytest.raises(ValueError, match="per-example"):
        measure_barriers([A, B], [1, 1], GROUPS, ragged, metrics=("loss",), families=("full",))


def test_each_layers_share_of_the_parameters_and_of_the_squared_distance():
    """Issue 19: a reader sees whether a layer's barrier is just its size. x holds 1 of 4
    parameters; between a and b it is 3 apart and y sqrt(1 + 1 + 4) apart: squared 9 and 6."""
    a = {"x.weight": torch.tensor([3.0]), "y.weight": torch.tensor([1.0, 1.0, 2.0])}
    b = {"x.weight": torch.tensor([0.0]), "y.weight": torch.tensor([0.0, 0.0, 0.0])}
    d = layer_distances([a, b], [0.5, 0.5], {"x": ["x.weight"], "y": ["y.weight"]})
    assert (d["x"]["param_share"], d["y"]["param_share"]) == (0.25, 0.75)
    assert d["x"]["sq_distance_share"] == pytest.approx(9 / 15)
    assert d["y"]["sq_distance_share"] == pytest.approx(6 / 15)
    assert d["model"]["param_share"] == d["model"]["sq_distance_share"] == 1.0
    same = layer_distances([a, a], [0.5, 0.5], {"x": ["x.weight"], "y": ["y.weight"]})
    assert same["x"]["sq_distance_share"] is None  # no distance to share out
