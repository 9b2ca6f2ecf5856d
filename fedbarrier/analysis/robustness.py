"""Is averaging one layer special, or would any move of that size hurt as much?

BARRIERS.md, "Random direction of the same size" (Adilova et al., ICLR 2024, Section 5): for
models A, B and each layer l, with d_l = ||w_A^l - w_B^l|| and u ~ N(0, I),
w_rnd^l = w_A^l + d_l u / ||u||. We score

- *interpolation*: A with layer l moved to (w_A^l + w_B^l) / 2, and
- *random*: A with layer l moved to (w_A^l + w_rnd^l) / 2 = w_A^l + (d_l / 2) u / ||u||,

both as the increase over A itself, L(variant) - L(A) (a difference, never a ratio). The random
direction is drawn ``draws`` times (seeded by the seed, the layer's name and the draw, so a layer's
draws do not depend on which other layers exist) and reported as mean and sample standard
deviation (ddof = 1) over draws. Both moves have the same length d_l / 2, so a smaller
interpolation increase means B lies in an unusually flat direction from A, a larger one in an
unusually sharp direction. Only floating-point tensors of a layer are moved.

    fedbarrier analyze robustness RUN_DIR [--round N] [--clients 0,1] [--split test] [--draws 5]
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbarrier.analysis import METRICS, StateDict, flatten, float_keys, json_ready, load_run, with_vector
from fedbarrier.errors import UserError
from fedbarrier.measure.barriers import EvaluateMany, interpolate
from fedbarrier.runtime.rundir import write_atomic
from fedbarrier.seeds import Stream, derive_seed


def random_midpoint(a: StateDict, keys: Sequence[str], distance: float,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A with ``keys`` moved to w_A + (distance / 2) u / ||u||, u ~ N(0, I) drawn from ``generator``."""
    u = torch.randn(sum(a[k].numel() for k in keys), generator=generator, dtype=torch.float64)
    norm = float(u.norm())
    step = u * (distance / 2 / norm) if norm > 0 else u * 0.0
    return with_vector(a, keys, flatten(a, keys) + step)


def robustness_variants(
    a: StateDict, b: StateDict, groups: Mapping[str, Sequence[str]], *, draws: int, seed: int
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """The named variants of A to score, and d_l per layer.

    Names: ``"A"``; ``"interp/<layer>"``; ``"random/<layer>/<draw>"``. Every variant reuses A's
    tensor objects outside the moved layer (no copies), so an evaluator can share activations.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    variants: dict[str, dict[str, torch.Tensor]] = {"A": dict(a)}
    distance: dict[str, float] = {}
    for layer, layer_keys in groups.items():
        keys = float_keys(a, layer_keys)
        index = zlib.crc32(layer.encode())  # seeded by the layer's name, not its position
        distance[layer] = float((flatten(a, keys) - flatten(b, keys)).norm())
        variants[f"interp/{layer}"] = interpolate(a, b, 0.5, keys)
        for draw in range(draws):
            gen = torch.Generator().manual_seed(derive_seed(seed, Stream.ROBUSTNESS, index, draw))
            variants[f"random/{layer}/{draw}"] = random_midpoint(a, keys, distance[layer], gen)
    return variants, distance


@dataclass
class Robustness:
    """Per-layer increases over L(A) of the interpolation and the random-direction midpoints."""

    layers: list[str]
    distance: dict[str, float]  # d_l = ||w_A^l - w_B^l||
    draws: int
    base: dict[str, float] = field(default_factory=dict)  # L(A) per metric
    interpolation: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> layer -> inc.
    random: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric -> layer -> draws

    def random_mean(self, metric: str, layer: str) -> float:
        return float(np.mean(self.random[metric][layer]))

    def random_std(self, metric: str, layer: str) -> float:
        values = self.random[metric][layer]
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "layers": self.layers, "distance": self.distance, "draws": self.draws, "base": self.base,
            "interpolation": self.interpolation,
            "random": {m: {layer: {"mean": self.random_mean(m, layer), "std": self.random_std(m, layer),
                                   "draws": values}
                           for layer, values in by_layer.items()}
                       for m, by_layer in self.random.items()},
        }


def layer_robustness(
    a: StateDict,
    b: StateDict,
    groups: Mapping[str, Sequence[str]],
    evaluate_many: EvaluateMany,
    *,
    draws: int = 5,
    seed: int = 0,
    metrics: Sequence[str] = METRICS,
) -> Robustness:
    """Score A, and per layer the interpolation midpoint and ``draws`` random-direction midpoints.

    Parameters
    ----------
    a, b
        State dicts of models A and B (never modified).
    groups
        Ordered layers ``{layer: [state-dict keys]}``.
    evaluate_many
        Scores a list of state dicts on one fixed data sample, ``[{metric: value}, ...]``.
    """
    variants, distance = robustness_variants(a, b, groups, draws=draws, seed=seed)
    names = list(variants)
    scores = list(evaluate_many([variants[name] for name in names]))
    if len(scores) != len(names):
        raise ValueError(f"evaluator returned {len(scores)} results for {len(names)} models")
    value = {name: s for name, s in zip(names, scores)}
    layers = list(groups)
    result = Robustness(layers=layers, distance=distance, draws=draws)
    for m in metrics:
        base = float(value["A"][m])
        result.base[m] = base
        result.interpolation[m] = {layer: float(value[f"interp/{layer}"][m]) - base for layer in layers}
        result.random[m] = {layer: [float(value[f"random/{layer}/{i}"][m]) - base for i in range(draws)]
                            for layer in layers}
    return result


def format_table(record: Mapping[str, Any]) -> str:
    """One row per layer: d_l, then interpolation vs random (mean ± std) increase per metric."""
    metrics = list(record["base"])
    head = (f"clients {record['clients'][0]} (A) and {record['clients'][1]} (B), round {record['round']}, "
            f"{record['split']} split, n = {record['n']}, {record['draws']} random draws per layer; "
            + ", ".join(f"{m}(A) = {record['base'][m]:.4f}" for m in metrics))
    header = f"{'layer':<24}{'d_l':>10}" + "".join(f"{m + ' interp':>16}{m + ' random':>22}" for m in metrics)
    lines = [head, "increase over A when one layer moves halfway to B (interp) or to a random point "
             "at the same distance", header, "-" * len(header)]
    for layer in record["layers"]:
        row = f"{layer:<24}{record['distance'][layer]:>10.4g}"
        for m in metrics:
            rnd = record["random"][m][layer]
            row += f"{record['interpolation'][m][layer]:>+16.4f}{rnd['mean']:>+13.4f} ± {rnd['std']:<6.4f}"
        lines.append(row)
    return "\n".join(lines)


def analyze_run(run_dir: str | Path, *, server_round: int | None, clients: tuple[int, int],
                split: str, draws: int, n: int | None, seed: int | None,
                out: str | Path | None = None, as_json: bool = False) -> dict[str, Any]:
    """``fedbarrier analyze robustness``: writes ``robustness.json`` and ``robustness_{metric}.png``
    to ``out`` (default ``RUN_DIR/analysis``; a second call overwrites them)."""
    from fedbarrier.plots.analysis import plot_robustness

    if draws < 1:
        raise UserError(f"--draws {draws} must be >= 1")
    start = time.perf_counter()
    run = load_run(run_dir, server_round=server_round, clients=clients, split=split, n=n)
    seed = run.cfg.seed if seed is None else seed
    result = layer_robustness(run.a, run.b, run.groups, run.evaluator(), draws=draws, seed=seed)
    record = {"run_dir": str(run.run_dir), "round": run.round, "clients": list(clients),
              "split": split, "n": len(run.y), "seed": seed, **result.to_record(),
              "seconds": time.perf_counter() - start}
    out = run.run_dir / "analysis" if out is None else Path(out)
    write_atomic(out / "robustness.json", json.dumps(json_ready(record), indent=1) + "\n")
    paths = [plot_robustness(record, m, out / f"robustness_{m}.png") for m in record["base"]]
    print(json.dumps(json_ready(record)) if as_json else format_table(record))
    if not as_json:
        print("written: " + ", ".join(str(p) for p in [out / "robustness.json", *paths]))
    return record

