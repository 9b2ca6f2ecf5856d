"""How sensitive is model A to noise inside, and outside, the subspace its training moved in?

BARRIERS.md, "Subspaces" (Adilova et al., ICLR 2024, Section 5). For a *scope* (the whole model,
or one layer's coordinates only):

- the **training subspace** is the span of the displacements θ_t − θ_0 of every saved training
  state θ_t (clients A and B over the saved rounds) from the initial model θ_0: an orthonormal
  basis from the SVD of the stacked displacements, keeping singular values above ``rtol`` times
  the largest (rank-deficient stacks, e.g. a repeated checkpoint, lose nothing). We center on
  θ_0 rather than span the raw vectors because the raw span also contains θ_0's own direction
  (a random initialization, i.e. a rescaling of the weights) in which training did not move;
  the span of displacements is the direction space of the trajectory's affine hull, the same
  as centering on the mean. It contains the interpolation direction whenever θ_A and θ_B are
  among the stacked states (recorded as ``interp_in_subspace`` = ||P u||, 1 up to rounding);
- the **null space** is its orthogonal complement: Gaussian noise with the subspace projected out;
- the **interpolation direction** is u = (θ_A − θ_B) / ||θ_A − θ_B||.

Noise of norm σ is drawn in each (uniformly on the sphere of the subspace; for the interpolation
direction, the two points θ_A ± σu: "+" moves away from B, "−" towards it), added to A on the
scope's floating-point coordinates, and the increase L(A + noise) − L(A) is recorded against σ.
With ``scale = "distance"`` σ is a multiple of the scope's ||θ_A − θ_B|| (so σ = 0.5 along −u is
the midpoint of A and B, the single-layer barrier's model for a layer scope, and layers of very
different norms are comparable); with ``"absolute"`` it is a plain Euclidean norm.

    fedbarrier analyze subspace RUN_DIR [--round N] [--clients 0,1] [--sigmas 0.1,0.5] [--draws 3]
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbarrier.analysis import (
    METRICS,
    RunModels,
    StateDict,
    flatten,
    float_keys,
    json_ready,
    load_run,
    saved_rounds,
    with_vector,
)
from fedbarrier.errors import UserError
from fedbarrier.measure.barriers import EvaluateMany
from fedbarrier.runtime.build import initial_state
from fedbarrier.runtime.rundir import write_atomic
from fedbarrier.seeds import Stream, derive_seed

KINDS = ("training", "null", "interpolation")
SCALES = ("distance", "absolute")
DEFAULT_SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
MODEL = "model"  # the whole-model scope; every other scope is a layer


# --------------------------------------------------------------------------------------- geometry
def training_basis(vectors: Sequence[torch.Tensor], origin: torch.Tensor, *,
                   rtol: float = 1e-9) -> torch.Tensor:
    """Orthonormal basis (D x k, float64) of span{v − origin : v in vectors}.

    k is the numerical rank: singular values below ``rtol`` times the largest are dropped.
    """
    origin = origin.to(torch.float64)
    if not vectors:
        return torch.zeros(origin.numel(), 0, dtype=torch.float64)
    stacked = torch.stack([v.to(torch.float64) - origin for v in vectors], dim=1)
    left, singular, _ = torch.linalg.svd(stacked, full_matrices=False)
    if singular.numel() == 0 or float(singular[0]) == 0.0:
        return left[:, :0]
    return left[:, singular > rtol * singular[0]]


def subspace_noise(basis: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """A vector of norm ``sigma`` in the span of ``basis``, direction uniform on its unit sphere."""
    if basis.shape[1] == 0:
        raise ValueError("the subspace is {0}: no direction to draw")
    c = torch.randn(basis.shape[1], generator=generator, dtype=torch.float64)
    v = basis @ c
    return v * (sigma / float(v.norm()))


def null_noise(basis: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """A vector of norm ``sigma`` orthogonal to ``basis``: Gaussian noise with the span projected out."""
    if basis.shape[1] >= basis.shape[0]:
        raise ValueError("the subspace is the whole space: its complement is {0}")
    g = torch.randn(basis.shape[0], generator=generator, dtype=torch.float64)
    for _ in range(2):  # project twice: one pass leaves O(eps * ||g||) in the span
        g = g - basis @ (basis.T @ g)
    return g * (sigma / float(g.norm()))


# ------------------------------------------------------------------------------------ measurement
@dataclass
class SubspaceCurves:
    """Loss/error increase of A against σ, per scope (``"model"`` and each layer) and noise kind."""

    sigmas: list[float]
    scale: str
    draws: int
    scopes: list[str]
    base: dict[str, float] = field(default_factory=dict)  # L(A) per metric
    info: dict[str, dict[str, Any]] = field(default_factory=dict)  # per scope: dims, distance, σ used
    # scope -> kind -> metric -> [per sigma: [per draw]] (interpolation: [+u, −u]); NaN = undefined
    values: dict[str, dict[str, dict[str, list[list[float]]]]] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        def stats(rows: list[list[float]]) -> dict[str, Any]:
            arr = np.asarray(rows, dtype=float)
            std = (np.std(arr, axis=1, ddof=1) if arr.shape[1] > 1 else np.zeros(len(rows)))
            return {"mean": np.mean(arr, axis=1).tolist(), "std": std.tolist(), "values": rows}

        return {"sigmas": self.sigmas, "scale": self.scale, "draws": self.draws,
                "scopes": self.scopes, "base": self.base, "info": self.info,
                "curves": {scope: {kind: {m: stats(rows) for m, rows in by_metric.items()}
                                   for kind, by_metric in by_kind.items()}
                           for scope, by_kind in self.values.items()}}


def subspace_analysis(
    a: StateDict,
    b: StateDict,
    trajectory: Sequence[StateDict],
    groups: Mapping[str, Sequence[str]],
    evaluate_many: EvaluateMany,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    draws: int = 3,
    scale: str = "distance",
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
    layers: bool = True,
) -> SubspaceCurves:
    """Noise of norm σ in the training subspace, its complement and along θ_A − θ_B, added to A.

    Parameters
    ----------
    a, b
        Models A and B (never modified).
    trajectory
        Saved training states; ``trajectory[0]`` is the initial model θ_0, the origin of the
        subspace, which is spanned by ``trajectory[i] − trajectory[0]``.
    groups
        Ordered layers ``{layer: [state-dict keys]}``; each layer is a scope when ``layers``.
    evaluate_many
        Scores a list of state dicts on one fixed data sample.
    sigmas, scale
        Noise norms; ``scale = "distance"`` multiplies them by the scope's ||θ_A − θ_B||.
    draws
        Random draws per σ for the two subspaces (the interpolation direction uses ±u).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if draws < 1 or not sigmas or any(s < 0 for s in sigmas):
        raise ValueError("need draws >= 1 and a non-empty list of non-negative sigmas")
    if not trajectory:
        raise ValueError("the trajectory needs at least the initial model")
    scopes = {MODEL: [k for keys in groups.values() for k in keys]}
    if layers:
        scopes.update({layer: list(keys) for layer, keys in groups.items()})
    base_scores = evaluate_many([a])[0]
    result = SubspaceCurves(sigmas=[float(s) for s in sigmas], scale=scale, draws=draws,
                            scopes=list(scopes), base={m: float(base_scores[m]) for m in metrics})
    for scope_index, (scope, scope_keys) in enumerate(scopes.items()):
        keys = float_keys(a, scope_keys)
        flat_a = flatten(a, keys)
        diff = flat_a - flatten(b, keys)
        distance = float(diff.norm())
        basis = training_basis([flatten(t, keys) for t in trajectory[1:]], flatten(trajectory[0], keys))
        unit = diff / distance if distance > 0 else None
        sigma_abs = [s * (distance if scale == "distance" else 1.0) for s in result.sigmas]
        result.info[scope] = {
            "dim": flat_a.numel(), "subspace_dim": basis.shape[1], "distance": distance,
            "interp_in_subspace": float((basis.T @ unit).norm()) if unit is not None else float("nan"),
            "sigma_abs": sigma_abs,
        }
        rows: dict[str, dict[str, list[list[float]]]] = {k: {m: [] for m in metrics} for k in KINDS}
        for sigma_index, sigma in enumerate(sigma_abs):
            noise = _noise(basis, unit, sigma, draws, [seed, Stream.SUBSPACE, scope_index, sigma_index])
            defined = [v for vectors in noise.values() for v in vectors if v is not None]
            scores = iter(evaluate_many([with_vector(a, keys, flat_a + v) for v in defined]))
            for kind, vectors in noise.items():  # same order as `defined`
                scored = [next(scores) if v is not None else None for v in vectors]
                for m in metrics:
                    rows[kind][m].append([float(sc[m]) - result.base[m] if sc is not None else float("nan")
                                          for sc in scored])
        result.values[scope] = rows
    return result


def _noise(basis: torch.Tensor, unit: torch.Tensor | None, sigma: float, draws: int,
           seed_parts: list[int]) -> dict[str, list[torch.Tensor | None]]:
    """Noise vectors of norm ``sigma`` per kind: ``draws`` seeded draws in the training subspace and
    in the null space, and ``[+σu, −σu]``. None where a subspace is {0} (recorded as NaN)."""
    out: dict[str, list[torch.Tensor | None]] = {kind: [] for kind in KINDS}
    for draw in range(draws):
        for kind_index, (kind, draw_fn) in enumerate((("training", subspace_noise), ("null", null_noise))):
            gen = torch.Generator().manual_seed(derive_seed(*seed_parts, draw, kind_index))
            try:
                out[kind].append(draw_fn(basis, sigma, gen))
            except ValueError:  # an empty subspace or complement
                out[kind].append(None)
    out["interpolation"] = [unit * sigma, unit * -sigma] if unit is not None else [None, None]
    return out


# ----------------------------------------------------------------------------------------- command
def run_trajectory(run: RunModels) -> list[dict[str, torch.Tensor]]:
    """θ_0 (the common initialization; with ``train.client_init = "own"`` also A's and B's own),
    then every saved checkpoint of A and of B up to the analysed round."""
    states = [initial_state(run.cfg)]
    if run.cfg.train.client_init == "own":
        states += [initial_state(run.cfg, c) for c in run.clients]
    for server_round, ids in saved_rounds(run.run_dir).items():
        if server_round <= run.round:
            states += [run.checkpoint(server_round, c) for c in run.clients if c in ids]
    return states


def format_table(record: Mapping[str, Any]) -> str:
    """Per scope and metric, the mean increase for each σ and kind of noise."""
    unit = "x ||θ_A − θ_B|| of the scope" if record["scale"] == "distance" else "(absolute norm)"
    lines = [f"clients {record['clients'][0]} (A) and {record['clients'][1]} (B), round {record['round']}, "
             f"{record['split']} split, n = {record['n']}, {record['trajectory_states']} trajectory states, "
             f"{record['draws']} draws; increase over A of noise of norm σ {unit}"]
    sigmas = record["sigmas"]
    for scope in record["scopes"]:
        info = record["info"][scope]
        lines += ["", f"{scope}: dim {info['dim']}, training subspace dim {info['subspace_dim']}, "
                  f"||θ_A − θ_B|| = {info['distance']:.4g}, |P u| = {info['interp_in_subspace']:.4f}"]
        for m in record["base"]:
            curves = record["curves"][scope]
            rows = {"training (mean)": curves["training"][m]["mean"],
                    "null (mean)": curves["null"][m]["mean"],
                    "interp. to B": [v[1] for v in curves["interpolation"][m]["values"]],
                    "interp. away": [v[0] for v in curves["interpolation"][m]["values"]]}
            lines.append(f"  {m:<6}{'σ':>16}" + "".join(f"{s:>9.3g}" for s in sigmas))
            lines += [f"  {'':<6}{name:>16}" + "".join(_cell(v) for v in values)
                      for name, values in rows.items()]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{value:>+9.4f}" if value is not None and np.isfinite(value) else f"{'n/a':>9}"


def parse_sigmas(items: Sequence[str] | None) -> list[float]:
    """``--sigmas 0.1,0.5 1`` -> [0.1, 0.5, 1.0] (commas or spaces), or a one-line UserError."""
    if not items:
        return list(DEFAULT_SIGMAS)
    try:
        values = [float(v) for item in items for v in item.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sigmas {' '.join(items)!r} must be non-negative numbers") from None
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--sigmas {' '.join(items)!r} must be non-negative numbers")
    return values


def analyze_run(run_dir: str | Path, *, server_round: int | None, clients: tuple[int, int], split: str,
                sigmas: Sequence[float], draws: int, scale: str, n: int | None, seed: int | None,
                out: str | Path | None = None, as_json: bool = False) -> dict[str, Any]:
    """``fedbarrier analyze subspace``: writes ``subspace.json``, ``subspace_{metric}.png`` and
    ``subspace_layers_{metric}.png`` to ``out`` (default ``RUN_DIR/analysis``)."""
    from fedbarrier.plots.analysis import plot_subspace, plot_subspace_layers

    if draws < 1:
        raise UserError(f"--draws {draws} must be >= 1")
    start = time.perf_counter()
    run = load_run(run_dir, server_round=server_round, clients=clients, split=split, n=n)
    seed = run.cfg.seed if seed is None else seed
    trajectory = run_trajectory(run)
    curves = subspace_analysis(run.a, run.b, trajectory, run.groups, run.evaluator(), sigmas=sigmas,
                               draws=draws, scale=scale, seed=seed)
    rounds = sorted(r for r in saved_rounds(run.run_dir) if r <= run.round)
    record = {"run_dir": str(run.run_dir), "round": run.round, "clients": list(clients), "split": split,
              "n": len(run.y), "seed": seed,
              "trajectory_states": len(trajectory), "trajectory_rounds": rounds,
              **curves.to_record(), "seconds": time.perf_counter() - start}
    record = json_ready(record)
    out = run.run_dir / "analysis" if out is None else Path(out)
    write_atomic(out / "subspace.json", json.dumps(record, indent=1) + "\n")
    paths = [p for m in record["base"]
             for p in (plot_subspace(record, m, out / f"subspace_{m}.png"),
                       plot_subspace_layers(record, m, out / f"subspace_layers_{m}.png"))]
    print(json.dumps(record) if as_json else format_table(record))
    if not as_json:
        print("written: " + ", ".join(str(p) for p in [out / "subspace.json", *paths]))
    return record
