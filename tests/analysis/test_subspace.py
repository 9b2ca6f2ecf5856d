"""Training subspace, null space and interpolation direction: geometry and a quadratic loss."""

from __future__ import annotations

import math

import pytest
import torch

from fedbarrier.analysis.subspace import (
    null_noise,
    subspace_analysis,
    subspace_noise,
    training_basis,
)

E = torch.eye(4, dtype=torch.float64)
ORIGIN = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def plane_basis() -> torch.Tensor:
    """Displacements (1, 1, 0, 0), (2, −1, 0, 0), (3, 0, 0, 0): rank 2, span{e1, e2}."""
    vectors = [ORIGIN + torch.tensor(v, dtype=torch.float64)
               for v in ([1, 1, 0, 0], [2, -1, 0, 0], [3, 0, 0, 0])]
    return training_basis(vectors, ORIGIN)


def test_basis_of_a_known_plane_is_orthonormal_with_the_right_projector():
    # Execute
    q = plane_basis()
    # Assert: the dependent third displacement adds no dimension
    assert q.shape == (4, 2)
    assert torch.allclose(q.T @ q, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(q @ q.T, torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)),
                          atol=1e-12)


def test_basis_is_centered_on_the_origin_not_the_raw_vectors():
    # Prepare: every state equals the origin except one displacement along e3
    vectors = [ORIGIN.clone(), ORIGIN + 2 * E[2]]
    # Execute
    q = training_basis(vectors, ORIGIN)
    # Assert: span{e3}, not span{origin, origin + 2 e3} (which would be 2-D)
    assert q.shape == (4, 1)
    assert torch.allclose((q @ q.T) @ E[2], E[2], atol=1e-12)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 7.5])
def test_noise_norms_equal_sigma_and_the_two_kinds_are_orthogonal(sigma):
    # Prepare
    q = plane_basis()
    # Execute
    inside = subspace_noise(q, sigma, gen(0))
    outside = null_noise(q, sigma, gen(1))
    # Assert
    assert float(inside.norm()) == pytest.approx(sigma, rel=1e-12)
    assert float(outside.norm()) == pytest.approx(sigma, rel=1e-12)
    assert inside[2:].abs().max() < 1e-12 * sigma  # in span{e1, e2}
    assert outside[:2].abs().max() < 1e-12 * sigma  # in span{e3, e4}
    assert abs(float(inside @ outside)) < 1e-12 * sigma ** 2


def test_empty_subspaces_are_refused():
    with pytest.raises(ValueError):
        subspace_noise(torch.zeros(4, 0, dtype=torch.float64), 1.0, gen(0))
    with pytest.raises(ValueError):
        null_noise(E, 1.0, gen(0))


# ---------------------------------------------------------------------------- a quadratic loss
# One 4-vector parameter; loss(θ) = ½ (θ − A)ᵀ H (θ − A) with H = diag(h): minimum 0 at A, so the
# increase of a step of norm σ along a unit vector v is σ² vᵀHv / 2.
H = torch.tensor([2.0, 2.0, 10.0, 10.0], dtype=torch.float64)  # curvature 2 in the plane, 10 outside
A_VEC = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)


def sd(v: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"w.weight": v.clone()}


def quadratic(states):
    out = []
    for s in states:
        d = s["w.weight"] - A_VEC
        loss = 0.5 * float((H * d * d).sum())
        out.append({"loss": loss, "error": 2 * loss})
    return out


def quadratic_run(**kwargs):
    # trajectory: θ_0 = A − (1, 1, 0, 0) and states moving in span{e1, e2}; B = A − (2, 0, 0, 0)
    b = A_VEC - 2 * E[0]
    trajectory = [sd(A_VEC - E[0] - E[1]), sd(A_VEC), sd(b), sd(A_VEC + 0.5 * E[1])]
    return subspace_analysis(sd(A_VEC), sd(b), trajectory, {"w": ["w.weight"]}, quadratic,
                             layers=False, **kwargs)


def test_quadratic_loss_increase_is_sigma_squared_curvature_over_two():
    # Execute
    sigmas = [0.0, 0.5, 1.0, 3.0]
    res = quadratic_run(sigmas=sigmas, draws=3, scale="absolute", seed=4)
    # Assert
    assert res.base == {"loss": 0.0, "error": 0.0}
    assert res.info["model"]["subspace_dim"] == 2
    assert res.info["model"]["interp_in_subspace"] == pytest.approx(1.0, abs=1e-12)
    curves = res.values["model"]
    for i, sigma in enumerate(sigmas):
        assert curves["training"]["loss"][i] == pytest.approx([sigma ** 2 * 2.0 / 2] * 3, abs=1e-12)
        assert curves["null"]["loss"][i] == pytest.approx([sigma ** 2 * 10.0 / 2] * 3, abs=1e-12)
        # the interpolation direction is e1 (curvature 2), on both sides of A
        assert curves["interpolation"]["loss"][i] == pytest.approx([sigma ** 2 * 2.0 / 2] * 2, abs=1e-12)
        assert curves["null"]["error"][i] == pytest.approx([sigma ** 2 * 10.0] * 3, abs=1e-12)


def test_distance_scale_multiplies_sigma_by_the_distance_of_a_and_b():
    # Execute: ||A − B|| = 2, so σ = 0.5 is a step of norm 1 (the midpoint towards B)
    res = quadratic_run(sigmas=[0.5], draws=1, scale="distance")
    # Assert
    assert res.info["model"]["distance"] == pytest.approx(2.0)
    assert res.info["model"]["sigma_abs"] == [1.0]
    assert res.values["model"]["interpolation"]["loss"][0] == pytest.approx([1.0, 1.0])
    record = res.to_record()
    assert record["curves"]["model"]["null"]["loss"]["mean"] == pytest.approx([5.0])


def test_whole_subspace_leaves_no_complement_and_is_recorded_as_nan():
    # Prepare: four independent displacements span all of R^4
    trajectory = [sd(A_VEC)] + [sd(A_VEC + E[i]) for i in range(4)]
    # Execute
    res = subspace_analysis(sd(A_VEC), sd(A_VEC + E[0]), trajectory, {"w": ["w.weight"]}, quadratic,
                            sigmas=[1.0], draws=2, scale="absolute", layers=False)
    # Assert
    assert res.info["model"]["subspace_dim"] == 4
    assert all(math.isnan(v) for v in res.values["model"]["null"]["loss"][0])
    # the subspace is all of R^4: the increase lies between the curvatures' extremes, 2/2 and 10/2
    assert all(1.0 - 1e-12 <= v <= 5.0 + 1e-12 for v in res.values["model"]["training"]["loss"][0])


def test_layer_scopes_perturb_only_that_layer():
    # Prepare: two layers; an evaluator that records which tensors it was given
    groups = {"l1": ["l1.weight"], "l2": ["l2.weight"]}
    a = {"l1.weight": torch.zeros(3, dtype=torch.float64), "l2.weight": torch.ones(2, dtype=torch.float64)}
    b = {"l1.weight": torch.ones(3, dtype=torch.float64), "l2.weight": torch.zeros(2, dtype=torch.float64)}
    init = {"l1.weight": torch.full((3,), 0.5, dtype=torch.float64),
            "l2.weight": torch.full((2,), 0.5, dtype=torch.float64)}
    seen = []

    def record(states):
        seen.extend(states)
        return [{"loss": 0.0, "error": 0.0} for _ in states]

    # Execute
    res = subspace_analysis(a, b, [init, a, b], groups, record, sigmas=[0.25], draws=2, scale="absolute")
    # Assert: one base evaluation, then (2 kinds x 2 draws + 2) per scope
    assert res.scopes == ["model", "l1", "l2"]
    assert len(seen) == 1 + 3 * 6
    l1_variants = seen[1 + 6:1 + 12]
    for v in l1_variants:
        assert v["l2.weight"] is a["l2.weight"]
        assert float((v["l1.weight"] - a["l1.weight"]).norm()) == pytest.approx(0.25, rel=1e-12)
    # l1's subspace: displacements (−.5,−.5,−.5) and (.5,.5,.5) span one line
    assert res.info["l1"]["subspace_dim"] == 1 and res.info["l1"]["dim"] == 3
