"""Robustness per layer (BARRIERS.md "Random direction of the same size"), hand-checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbarrier.analysis.robustness import layer_robustness, robustness_variants

GROUPS = {"l1": ["l1.weight", "l1.bias"], "l2": ["l2.weight"]}


def state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"l1.weight": torch.randn(3, 2, generator=gen, dtype=torch.float64),
            "l1.bias": torch.randn(3, generator=gen, dtype=torch.float64),
            "l2.weight": torch.randn(4, generator=gen, dtype=torch.float64)}


def flat(s, keys):
    return torch.cat([s[k].reshape(-1) for k in keys])


def squared_distance_to(target):
    """loss(θ) = ||θ − target||², error = 10 * loss: isotropic, so every direction of one length
    gives the same increase."""
    def evaluate(states):
        out = []
        for s in states:
            d2 = sum(float(((s[k] - target[k]) ** 2).sum()) for k in target)
            out.append({"loss": d2, "error": 10 * d2})
        return out
    return evaluate


def test_identical_models_give_exactly_zero_increase():
    # Prepare: B == A, so d_l = 0 and the midpoint is A itself
    a = state(0)
    b = {k: v.clone() for k, v in a.items()}
    # Execute
    res = layer_robustness(a, b, GROUPS, squared_distance_to(state(1)), draws=3)
    # Assert
    assert res.distance == {"l1": 0.0, "l2": 0.0}
    for m in ("loss", "error"):
        assert res.interpolation[m] == {"l1": 0.0, "l2": 0.0}
        assert res.random[m] == {"l1": [0.0] * 3, "l2": [0.0] * 3}


def test_variants_move_one_layer_by_exactly_half_the_distance():
    # Prepare
    a, b = state(0), state(1)
    # Execute
    variants, distance = robustness_variants(a, b, GROUPS, draws=4, seed=7)
    # Assert
    for layer, keys in GROUPS.items():
        d = float((flat(a, keys) - flat(b, keys)).norm())
        assert distance[layer] == pytest.approx(d, rel=1e-15)
        mid = variants[f"interp/{layer}"]
        assert torch.allclose(flat(mid, keys), (flat(a, keys) + flat(b, keys)) / 2, rtol=0, atol=1e-15)
        for i in range(4):
            rnd = variants[f"random/{layer}/{i}"]
            step = flat(rnd, keys) - flat(a, keys)
            assert float(step.norm()) == pytest.approx(d / 2, rel=1e-12)
            # the step is not along B − A (a random direction)
            cos = float(step @ (flat(b, keys) - flat(a, keys))) / (float(step.norm()) * d)
            assert abs(cos) < 0.999
        # every other layer keeps A's very tensor objects (no copies)
        for other, other_keys in GROUPS.items():
            if other != layer:
                for variant in (mid, variants[f"random/{layer}/0"]):
                    assert all(variant[k] is a[k] for k in other_keys)


def test_isotropic_loss_increase_is_the_squared_step_for_both_directions():
    # Prepare: loss = ||θ − A||², so moving layer l by d_l/2 in any direction costs (d_l/2)²
    a, b = state(0), state(1)
    # Execute
    res = layer_robustness(a, b, GROUPS, squared_distance_to(a), draws=3, seed=1)
    # Assert
    assert res.base == {"loss": 0.0, "error": 0.0}
    for layer in GROUPS:
        expected = (res.distance[layer] / 2) ** 2
        assert res.interpolation["loss"][layer] == pytest.approx(expected, rel=1e-12)
        assert res.random["loss"][layer] == pytest.approx([expected] * 3, rel=1e-12)
        assert res.random_std("loss", layer) == pytest.approx(0.0, abs=1e-12)
        assert res.interpolation["error"][layer] == pytest.approx(10 * expected, rel=1e-12)


def test_increase_is_a_difference_to_model_a_and_std_is_over_draws():
    # Prepare: loss = ||θ − B||²: the midpoint towards B *decreases* the loss (kept negative)
    a, b = state(0), state(1)
    # Execute
    res = layer_robustness(a, b, GROUPS, squared_distance_to(b), draws=5, seed=3)
    rec = res.to_record()
    # Assert: L(mid) − L(A) = (d/2)² − d² = −3d²/4 on the moved layer
    for layer in GROUPS:
        d = res.distance[layer]
        assert res.interpolation["loss"][layer] == pytest.approx(-0.75 * d * d, rel=1e-12)
        values = res.random["loss"][layer]
        assert rec["random"]["loss"][layer]["mean"] == pytest.approx(np.mean(values))
        assert rec["random"]["loss"][layer]["std"] == pytest.approx(np.std(values, ddof=1))
        assert rec["random"]["loss"][layer]["std"] > 0  # random directions differ in cost here


def test_draws_are_seeded_per_layer_and_inputs_untouched():
    # Prepare
    a, b = state(0), state(1)
    before = {k: v.clone() for k, v in a.items()}
    # Execute
    v1, _ = robustness_variants(a, b, GROUPS, draws=2, seed=5)
    v2, _ = robustness_variants(a, b, GROUPS, draws=2, seed=5)
    v3, _ = robustness_variants(a, b, GROUPS, draws=2, seed=6)
    # Assert
    assert torch.equal(v1["random/l2/1"]["l2.weight"], v2["random/l2/1"]["l2.weight"])
    assert not torch.equal(v1["random/l2/1"]["l2.weight"], v3["random/l2/1"]["l2.weight"])
    assert not torch.equal(v1["random/l2/0"]["l2.weight"], v1["random/l2/1"]["l2.weight"])
    assert all(torch.equal(a[k], before[k]) for k in a)
    # a layer's draws do not depend on the other layers
    only_l2, _ = robustness_variants(a, b, {"l2": ["l2.weight"]}, draws=2, seed=5)
    assert torch.equal(only_l2["random/l2/1"]["l2.weight"], v1["random/l2/1"]["l2.weight"])


def test_draws_must_be_positive():
    with pytest.raises(ValueError, match="draws"):
        robustness_variants(state(0), state(1), GROUPS, draws=0, seed=0)
