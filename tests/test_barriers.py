"""Barrier math against ../shared/docs/BARRIERS.md, with hand-computed values."""

from __future__ import annotations

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
    assert sub.per_layer["loss"]["a"].per_default == pytest.approx(pd[1:])
    assert sub.per_layer["loss"]["a"].mean == pytest.approx((0.3 * pd[1] + 0.2 * pd[2]) / 0.5)


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
