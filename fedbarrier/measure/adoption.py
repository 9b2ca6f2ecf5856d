"""Which averaged layers a client adopts: the decision rule of barrier-aware personalization.

A client holding its own model θ_k receives the round's average θ̄. For each layer l it knows
the local single-layer barrier B^loc_{l}(k) on its own training data (docs/BARRIERS.md, Version
2). It adopts layers greedily, in order of increasing single-layer barrier (ties by name), adding
a layer while the *cumulative* local barrier of the adopted set stays not significantly positive:
value <= z * se. It stops at the first layer that would break that; the rest stay its own.

Pure: the caller supplies the single-layer values and a function measuring a layer set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: (value, se) of the local barrier of a layer set, on the client's training sample.
MeasureSet = Callable[[Sequence[str]], tuple[float, float]]


@dataclass(frozen=True)
class Adoption:
    layers: list[str]  # the adopted layers, in the order they were added
    order: list[str]  # every layer, in the order they were tried
    cumulative: list[tuple[float, float]]  # (value, se) of each set tried, in that order


def adopt_layers(single: Mapping[str, float], measure_set: MeasureSet, z: float) -> Adoption:
    """The greedy choice above. ``single``: layer -> its local single-layer barrier."""
    if z < 0:
        raise ValueError(f"z = {z} must be >= 0")
    order = sorted(single, key=lambda name: (single[name], name))
    adopted: list[str] = []
    tried: list[tuple[float, float]] = []
    for name in order:
        value, se = measure_set([*adopted, name])
        tried.append((value, se))
        if value > z * se:
            break
        adopted.append(name)
    return Adoption(layers=adopted, order=order, cumulative=tried)
