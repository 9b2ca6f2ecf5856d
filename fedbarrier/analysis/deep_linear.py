"""The hand-checkable deep linear network of BARRIERS.md: fedbarrier's own example, not the paper's.

It illustrates, with numbers anyone can check by hand, the paper's point that a barrier along
the full interpolation path says little about single-layer cuts (Adilova et al., ICLR 2024,
discuss layer-wise barriers of deep linear networks); the weights and the numbers below are
fedbarrier's, chosen for hand-checking, not taken from the paper's figures.

f(x) = w₂·w₁·x, one example (x = 1, y = 1), squared loss (f − y)², K = 2, p = (½, ½),
A = (w₁, w₂) = (2, ½), B = (½, 2). Both endpoints have loss 0, yet

- the full interpolation path has a bump: at α = ½, (1.25, 1.25) gives f = 1.5625 and loss
  0.31640625 = B_full;
- each single-layer cut (one layer interpolated, the other kept from A) is convex in α, because
  the output is linear in α along it: averaging layer 1 gives (1.25, ½), loss 0.140625; averaging
  layer 2 gives (2, 1.25), loss 2.25.

So a barrier along the full path says nothing about single-layer cuts, and a layer-wise barrier can
be large (2.25) where the loss along the cut has no bump at all. Everything below goes through the
project's own code (``fedbarrier.measure.barriers.interpolate`` and ``measure_barriers``), so this is also
a regression test of that code.

    fedbarrier analyze deep-linear [--out DIR] [--points 21] [--json]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedbarrier.analysis import StateDict, json_ready
from fedbarrier.errors import UserError
from fedbarrier.measure.barriers import interpolate, measure_barriers
from fedbarrier.runtime.rundir import write_atomic

X, Y = 1.0, 1.0
A = (2.0, 0.5)
B = (0.5, 2.0)
GROUPS = {"layer1": ["layer1.weight"], "layer2": ["layer2.weight"]}


def state(w1: float, w2: float) -> dict[str, torch.Tensor]:
    """The network (w₁, w₂) as a state dict of 1x1 float64 weights (float64: exact numbers)."""
    return {"layer1.weight": torch.tensor([[w1]], dtype=torch.float64),
            "layer2.weight": torch.tensor([[w2]], dtype=torch.float64)}


def squared_loss(states: Sequence[StateDict]) -> list[dict[str, float]]:
    """The evaluator: ``[{"loss": (w₂·w₁·x − y)²}]`` for each state (an ``evaluate_many``)."""
    out = []
    for s in states:
        f = float(s["layer2.weight"].squeeze()) * float(s["layer1.weight"].squeeze()) * X
        out.append({"loss": (f - Y) ** 2})
    return out


@dataclass(frozen=True)
class DeepLinear:
    """Loss along the full path and the single-layer cuts (default A), and the barriers."""

    alphas: list[float]
    paths: dict[str, list[float]]  # "full", "layer1", "layer2" -> loss at each alpha
    points: dict[str, list[list[float]]]  # the same paths as (w1, w2) points
    full: float  # B_full
    per_layer: dict[str, list[float]]  # layer -> [barrier with default A, with default B]

    def to_record(self) -> dict[str, Any]:
        return {"alphas": self.alphas, "paths": self.paths, "points": self.points, "full": self.full,
                "per_layer": self.per_layer, "A": list(A), "B": list(B), "x": X, "y": Y}


def deep_linear_example(points: int = 21) -> DeepLinear:
    """Evaluate the example on ``points`` equally spaced α in [0, 1] (ends included)."""
    if points < 3:
        raise ValueError(f"need at least 3 points on the alpha grid, got {points}")
    a, b = state(*A), state(*B)
    alphas = [i / (points - 1) for i in range(points)]
    cuts: dict[str, list[str] | None] = {"full": None, **{layer: keys for layer, keys in GROUPS.items()}}
    paths: dict[str, list[float]] = {}
    coords: dict[str, list[list[float]]] = {}
    for name, keys in cuts.items():
        models = [interpolate(a, b, alpha, keys) for alpha in alphas]
        paths[name] = [r["loss"] for r in squared_loss(models)]
        coords[name] = [[float(m["layer1.weight"]), float(m["layer2.weight"])] for m in models]
    result = measure_barriers([a, b], [0.5, 0.5], GROUPS, squared_loss, families=("full", "per_layer"),
                              metrics=("loss",))
    return DeepLinear(alphas=alphas, paths=paths, points=coords, full=result.full["loss"],
                      per_layer={layer: s.per_default for layer, s in result.per_layer["loss"].items()})


def second_differences(values: Sequence[float]) -> list[float]:
    """v[i-1] − 2 v[i] + v[i+1]: all >= 0 on an equally spaced grid iff the samples are convex."""
    return [values[i - 1] - 2 * values[i] + values[i + 1] for i in range(1, len(values) - 1)]


def format_report(result: DeepLinear) -> str:
    conv = {name: min(second_differences(v)) >= 0 for name, v in result.paths.items()}
    lines = [f"deep linear network f(x) = w2*w1*x, x = {X}, y = {Y}, squared loss; "
             f"A = (w1, w2) = {A}, B = {B}; both endpoints have loss 0",
             f"full barrier (both layers averaged, alpha = 1/2): {result.full:.8f}"]
    for layer, (with_a, with_b) in result.per_layer.items():
        lines.append(f"{layer} averaged: {with_a:.8f} with default A, {with_b:.8f} with default B")
    lines.append("convex along the path (second differences >= 0): "
                 + ", ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in conv.items()))
    return "\n".join(lines)


def analyze(out: str | Path, *, points: int = 21, as_json: bool = False) -> dict[str, Any]:
    """``fedbarrier analyze deep-linear``: print the barriers, write ``deep_linear.json`` and a plot."""
    from fedbarrier.plots.analysis import plot_deep_linear

    if points < 3:
        raise UserError(f"--points {points} must be at least 3")
    result = deep_linear_example(points)
    record = json_ready(result.to_record())
    folder = Path(out)
    write_atomic(folder / "deep_linear.json", json.dumps(record, indent=1) + "\n")
    plot = plot_deep_linear(record, folder / "deep_linear.png")
    if as_json:
        print(json.dumps(record))
    else:
        print(format_report(result))
        print(f"written: {folder / 'deep_linear.json'}, {plot}")
    return record
