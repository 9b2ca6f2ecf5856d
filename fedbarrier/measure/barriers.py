"""Barrier math: state dicts, weights, a layer list and an evaluator in; numbers out.

Everything here follows ``shared/docs/BARRIERS.md`` (the contract) and reduces to the two-model
formulas of "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR 2024, arXiv 2307.06966)
for K = 2 and p = (1/2, 1/2). No Flower, no I/O: the hook (``fedbarrier.measure.hook``) feeds these
functions with the clients' models and the server's data.

The work is split the way loss-landscapes splits it: *which models* (this module builds named
variants: endpoints, averages, layer mixtures, interpolations), *how a model is scored* (an
``evaluate_many`` callable, see ``fedbarrier.measure.evaluator``) and *what the numbers mean* (barriers
computed from the scored variants). Every scored variant is kept (``BarrierResult.evaluated``) so
any barrier can be recomputed from a record.

Variants reuse the very tensor objects of the inputs and of one shared average (no copies), so
identical variants (e.g. the shallow group of all L layers and the full average) are detected by
tensor identity and evaluated once; an evaluator can also share activations between variants that
agree on their first layers.

Version 2 of the contract (self-referenced values, uncertainty) adds, and only adds, these keys to
``BarrierResult.to_record`` (every v1 key keeps its value for the all-defaults case):

- ``full_se``: ``{metric: se}`` of the full barrier, delta(x) = l(avg, x) - sum_k p_k l(theta_k, x).
- in every layer-set summary (``per_layer[m][layer]``, ``shallow[m][k-1]``, ``deep[m][k-1]``,
  ``window[m][i]``, ``random[m][r][k-1]``), beside ``per_default``/``mean``/``max``:

  - ``self_referenced``: [B~_S^(d) = L(avg_S^(d)) - L(theta_d) for d in ``defaults``];
  - ``se``: ``{"mean": se, "per_default": [se...], "self_referenced": [se...]}``. The mean's
    delta(x) is sum_{d in C} p~_d [l(avg_S^(d), x) - l(theta_d, x)]; a per-default value's is
    l(avg_S^(d), x) minus sum_k p_k l(theta_k, x) (``per_default``) or l(theta_d, x)
    (``self_referenced``).

- ``curve[m]["se"]``: [se of the interpolation barrier at each alpha].

``mean`` is the p-weighted mean of ``per_default`` when every client is a default (unchanged from
v1; it equals the p-weighted mean of ``self_referenced`` since sum_d p_d L(theta_d) = E), and
sum_{d in C} p~_d B~_S^(d), p~ = p renormalized over C, when only a subset C is (``defaults``).
For S = all layers (cumulative k = L) that is L(avg) - sum_{d in C} p~_d L(theta_d): the full
barrier only when C is every client (``full`` is always the exact one).

se = sd(delta) / sqrt(n) with the sample standard deviation (ddof = 1) over the n examples. It
needs per-example values: an ``evaluate_many`` may return, in each score, ``"examples": {metric:
1-D array of the n per-example values}`` (``ModelEvaluator`` does; the example order must be the
same for every model). Where a metric has none, or n < 2, every se of that metric is None.

Why one module over 300 lines: it is the barrier math of the contract in one place (a newcomer
finds every formula here, and the layer distances beside them); the local barriers
(``local.py``) build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

StateDict = Mapping[str, torch.Tensor]
LayerGroups = Mapping[str, Sequence[str]]
Metrics = Mapping[str, Any]  # {metric: value}, optionally "examples": {metric: per-example values}
EvaluateMany = Callable[[Sequence[StateDict]], Sequence[Metrics]]
Examples = dict[str, dict[str, np.ndarray]]  # {variant name: {metric: per-example values}}

FAMILIES = ("full", "per_layer", "cumulative", "curve")
METRICS = ("loss", "error")


# ---------------------------------------------------------------------------------------------
# Building models (variants)
# ---------------------------------------------------------------------------------------------
def normalize_weights(weights: Sequence[float], num_clients: int) -> list[float]:
    """Aggregation weights p_k summing to 1 (inputs may be example counts)."""
    w = [float(x) for x in weights]
    if len(w) != num_clients:
        raise ValueError(f"got {len(w)} weights for {num_clients} client models")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w}")
    total = sum(w)
    return [x / total for x in w]


def average_states(states: Sequence[StateDict], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted average sum_k p_k theta_k of floating tensors (computed in float64).

    Non-floating tensors (integer buffers such as BatchNorm's step counter) cannot be averaged;
    they are taken from the first model.
    """
    p = normalize_weights(weights, len(states))
    out: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for pk, state in zip(p, states):
            acc.add_(state[key].to(torch.float64), alpha=pk)
        out[key] = acc.to(first.dtype)
    return out


def mix_layers(
    default: StateDict, average: StateDict, groups: LayerGroups, layers: Iterable[str]
) -> dict[str, torch.Tensor]:
    """theta_bar_S^(d): the average on the layers in S, the default model everywhere else.

    Returns a new dict holding the *same tensor objects* as its inputs (no copies).
    """
    from_average = {key for layer in layers for key in groups[layer]}
    return {k: (average[k] if k in from_average else v) for k, v in default.items()}


def interpolate(
    a: StateDict, b: StateDict, alpha: float, keys: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b on ``keys`` (all keys if None), ``a`` elsewhere.

    At alpha = 0 and alpha = 1 the endpoint tensors themselves are returned, so the ends of an
    interpolation path are exactly the endpoints (loss-landscapes never evaluates alpha = 0).
    """
    chosen = set(a) if keys is None else set(keys)
    out: dict[str, torch.Tensor] = {}
    for k, va in a.items():
        if k not in chosen:
            out[k] = va
        elif alpha == 0.0:
            out[k] = va
        elif alpha == 1.0 or not va.is_floating_point():
            out[k] = b[k] if alpha == 1.0 else va
        else:
            out[k] = torch.lerp(va, b[k], alpha)
    return out


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def standard_error(delta: np.ndarray) -> float | None:
    """se = sd(delta) / sqrt(n), sample standard deviation (ddof = 1); None for n < 2."""
    n = len(delta)
    if n < 2:
        return None
    return float(np.std(delta, ddof=1) / math.sqrt(n))


def score_variants(
    variants: Mapping[str, StateDict], evaluate_many: EvaluateMany, metrics: Sequence[str]
) -> tuple[dict[str, dict[str, float]], Examples, int]:
    """Score each distinct model of ``variants`` once (identity of tensors = identity of models).

    Returns ``{name: {metric: value}}``, ``{name: {metric: per-example values}}`` for the metrics
    whose per-example values every score carries (``"examples"``; empty if none does), and the
    number of distinct models scored.
    """
    keys = list(next(iter(variants.values()), {}))
    unique: dict[tuple[int, ...], int] = {}
    to_score: list[StateDict] = []
    slot: dict[str, int] = {}
    for name, variant in variants.items():
        signature = tuple(id(variant[k]) for k in keys)
        if signature not in unique:
            unique[signature] = len(to_score)
            to_score.append(variant)
        slot[name] = unique[signature]
    scores = list(evaluate_many(to_score))
    if len(scores) != len(to_score):
        raise ValueError(f"evaluator returned {len(scores)} results for {len(to_score)} models")
    evaluated = {name: {m: float(scores[i][m]) for m in metrics} for name, i in slot.items()}
    per_slot: list[dict[str, np.ndarray]] = [{} for _ in scores]
    for m in metrics:
        got = [score.get("examples", {}).get(m) for score in scores]
        if not got or any(g is None for g in got):
            continue
        arrays = [np.asarray(g, dtype=np.float64).reshape(-1) for g in got]
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f"per-example {m} values of different lengths "
                             f"{sorted({len(a) for a in arrays})}: one sample for every model")
        for i, a in enumerate(arrays):
            per_slot[i][m] = a
    examples = {name: per_slot[i] for name, i in slot.items()}
    return evaluated, examples, len(to_score)


def _weighted_rows(weights: Sequence[float], rows: Sequence[np.ndarray]) -> np.ndarray:
    """sum_i weights_i rows_i, per example."""
    return np.asarray(weights, dtype=np.float64) @ np.stack(rows)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """One barrier measured once per default client, with its mean and max over the defaults.

    ``per_default`` is B_S^(d) (endpoint-referenced), ``self_referenced`` B~_S^(d) (referenced to
    d's own model), ``mean`` the module docstring's mean, ``max`` the max of ``per_default``;
    ``se`` holds ``{"mean": ..., "per_default": [...], "self_referenced": [...]}``.
    """

    per_default: list[float]
    mean: float
    max: float
    self_referenced: list[float] = field(default_factory=list)
    se: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"per_default": self.per_default, "mean": self.mean, "max": self.max,
                "self_referenced": self.self_referenced, "se": self.se}


@dataclass(frozen=True)
class Curve:
    """Pairwise interpolation between clients A and B on an alpha grid."""

    pair: tuple[int, int]
    alphas: list[float]
    values: list[float]  # raw metric of (1 - alpha) theta_A + alpha theta_B
    barrier: list[float]  # values minus the linear interpolation of the endpoint values
    max: float
    se: list[float | None] = field(default_factory=list)  # of each barrier value

    def to_record(self) -> dict[str, Any]:
        return {"pair": list(self.pair), "alphas": self.alphas, "values": self.values,
                "barrier": self.barrier, "max": self.max, "se": self.se}


@dataclass
class BarrierResult:
    """Everything one measurement produced, for every metric (``loss``, ``error``, ...)."""

    layers: list[str]
    weights: list[float]
    defaults: list[int]
    endpoint: dict[str, list[float]] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    full: dict[str, float] = field(default_factory=dict)
    full_se: dict[str, float | None] = field(default_factory=dict)
    per_layer: dict[str, dict[str, Summary]] = field(default_factory=dict)
    shallow: dict[str, list[Summary]] = field(default_factory=dict)
    deep: dict[str, list[Summary]] = field(default_factory=dict)
    window: dict[str, list[Summary]] = field(default_factory=dict)
    window_size: int = 0
    random: dict[str, list[list[Summary]]] = field(default_factory=dict)
    random_orders: list[list[str]] = field(default_factory=list)
    curve: dict[str, Curve] = field(default_factory=dict)
    evaluated: dict[str, dict[str, float]] = field(default_factory=dict)
    num_evaluated: int = 0

    def to_record(self) -> dict[str, Any]:
        """A JSON-serializable dict; cumulative lists are indexed by k - 1 (k layers)."""
        rec: dict[str, Any] = {
            "layers": self.layers,
            "weights": self.weights,
            "defaults": self.defaults,
            "endpoint": self.endpoint,
            "reference": self.reference,
            "full": self.full,
            "full_se": self.full_se,
            "per_layer": {m: {layer: s.to_record() for layer, s in by_layer.items()}
                          for m, by_layer in self.per_layer.items()},
            "shallow": {m: [s.to_record() for s in v] for m, v in self.shallow.items()},
            "deep": {m: [s.to_record() for s in v] for m, v in self.deep.items()},
            "curve": {m: c.to_record() for m, c in self.curve.items()},
            "evaluated": self.evaluated,
            "num_evaluated": self.num_evaluated,
        }
        if self.window:
            rec["window"] = {"size": self.window_size,
                             **{m: [s.to_record() for s in v] for m, v in self.window.items()}}
        if self.random:
            rec["random"] = {"orders": self.random_orders,
                             **{m: [[s.to_record() for s in order] for order in v]
                                for m, v in self.random.items()}}
        return rec


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------
def _check_inputs(states: Sequence[StateDict], groups: LayerGroups) -> None:
    if not states:
        raise ValueError("need at least one client model")
    keys = list(states[0])
    for k, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"client model {k} has different state-dict keys than model 0")
    grouped = [key for layer_keys in groups.values() for key in layer_keys]
    if sorted(grouped) != sorted(keys):
        missing = sorted(set(keys) - set(grouped))
        extra = sorted(set(grouped) - set(keys))
        raise ValueError(f"layer groups must cover the state-dict keys exactly once "
                         f"(missing {missing}, unknown {extra})")


def _cumulative(order: Sequence[str]) -> list[list[str]]:
    return [list(order[:k]) for k in range(1, len(order) + 1)]


def measure_barriers(
    states: Sequence[StateDict],
    weights: Sequence[float],
    groups: LayerGroups,
    evaluate_many: EvaluateMany,
    *,
    families: Sequence[str] = FAMILIES,
    metrics: Sequence[str] = METRICS,
    defaults: Sequence[int] | None = None,
    curve_pair: tuple[int, int] = (0, 1),
    curve_points: int = 11,
    window: int = 0,
    random_orders: int = 0,
    seed: int = 0,
) -> BarrierResult:
    """Measure the barriers of BARRIERS.md between K client models.

    Parameters
    ----------
    states
        The K client models theta_k (never modified).
    weights
        Aggregation weights p_k, or example counts (normalized here).
    groups
        Ordered layers, input to output: ``{layer: [state-dict keys]}`` covering every key.
    evaluate_many
        Scores a list of models on one fixed data sample, returning ``{metric: value}`` each,
        and optionally ``"examples": {metric: per-example values}`` (then every barrier gets
        its se; see the module docstring).
    families
        Subset of ``("full", "per_layer", "cumulative", "curve")``. Endpoints are always scored.
    defaults
        Default clients d for layer-set barriers (all clients if None). With a subset C the
        mean is sum_{d in C} p~_d B~_S^(d), p~ = p renormalized over C (BARRIERS.md v2).
    curve_pair, curve_points
        Clients A, B and the number of alphas on the grid in [0, 1] (ends included).
    window
        Moving-window size for the extra cumulative order (0: none).
    random_orders
        Number of seeded random layer orders for cumulative barriers (0: none).
    """
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown barrier families {sorted(unknown)}; allowed: {FAMILIES}")
    _check_inputs(states, groups)
    num = len(states)
    p = normalize_weights(weights, num)
    layers = list(groups)
    chosen = list(range(num)) if defaults is None else sorted(set(defaults))
    if not chosen or any(not 0 <= d < num for d in chosen):
        raise ValueError(f"default clients must be a non-empty subset of 0..{num - 1}, got {defaults}")
    average = average_states(states, p)

    # 1. Name every model to score.
    variants: dict[str, dict[str, torch.Tensor]] = {
        f"endpoint/{k}": dict(s) for k, s in enumerate(states)
    }
    if "full" in families:
        variants["full"] = dict(average)

    def add_layer_sets(prefix: str, sets: Sequence[Sequence[str]]) -> None:
        for i, layer_set in enumerate(sets):
            for d in chosen:
                variants[f"{prefix}/{i + 1}/d{d}"] = mix_layers(states[d], average, groups, layer_set)

    if "per_layer" in families:
        for layer in layers:
            for d in chosen:
                variants[f"layer/{layer}/d{d}"] = mix_layers(states[d], average, groups, [layer])
    rng = np.random.default_rng(seed)
    orders = [list(rng.permutation(layers)) for _ in range(random_orders)]
    windows = ([layers[i:i + window] for i in range(len(layers) - window + 1)]
               if window > 0 else [])
    if "cumulative" in families:
        add_layer_sets("shallow", _cumulative(layers))
        add_layer_sets("deep", _cumulative(layers[::-1]))
        add_layer_sets("window", windows)
        for r, order in enumerate(orders):
            add_layer_sets(f"random{r}", _cumulative(order))
    alphas: list[float] = []
    if "curve" in families and num >= 2:
        a, b = curve_pair
        alphas = [i / (curve_points - 1) for i in range(curve_points)] if curve_points > 1 else [0.0]
        for alpha in alphas:
            variants[f"curve/{alpha:.6g}"] = interpolate(states[a], states[b], alpha)

    # 2. Score each distinct model once (identity of tensors = identity of models).
    evaluated, examples, num_evaluated = score_variants(variants, evaluate_many, metrics)

    # 3. Barriers are differences to the endpoint reference E = sum_k p_k L(theta_k).
    result = BarrierResult(layers=layers, weights=p, defaults=chosen, evaluated=evaluated,
                           num_evaluated=num_evaluated, window_size=window if windows else 0,
                           random_orders=orders)
    p_chosen = [p[d] for d in chosen]
    p_total = sum(p_chosen)
    # p~: p renormalized over the defaults (uniform if they all weigh 0)
    p_tilde = [w / p_total for w in p_chosen] if p_total > 0 else [1 / len(chosen)] * len(chosen)
    every_client = len(chosen) == num

    def summary(metric: str, prefix: str, ref: float) -> Summary:
        mixed = [evaluated[f"{prefix}/d{d}"][metric] for d in chosen]
        values = [v - ref for v in mixed]
        own = [v - endpoint[d] for v, d in zip(mixed, chosen)]
        # With every client a default, sum_d p_d B_S^(d) = sum_d p_d B~_S^(d): keep v1's formula.
        chosen_values = values if every_client else own
        mean = (sum(w * v for w, v in zip(p_chosen, chosen_values)) / p_total if p_total > 0
                else float(np.mean(chosen_values)))
        se: dict[str, Any] = {"mean": None, "per_default": [None] * len(chosen),
                              "self_referenced": [None] * len(chosen)}
        if per_example is not None:
            rows = [examples[f"{prefix}/d{d}"][metric] for d in chosen]
            own_deltas = [row - per_example[d] for row, d in zip(rows, chosen)]
            se = {"mean": standard_error(_weighted_rows(p_tilde, own_deltas)),
                  "per_default": [standard_error(row - per_example_ref) for row in rows],
                  "self_referenced": [standard_error(o) for o in own_deltas]}
        return Summary(per_default=values, mean=mean, max=max(values), self_referenced=own, se=se)

    for m in metrics:
        endpoint = [evaluated[f"endpoint/{k}"][m] for k in range(num)]
        ref = sum(pk * v for pk, v in zip(p, endpoint))
        per_example = ([examples[f"endpoint/{k}"][m] for k in range(num)]
                       if m in examples["endpoint/0"] else None)
        per_example_ref = _weighted_rows(p, per_example) if per_example is not None else None
        result.endpoint[m] = endpoint
        result.reference[m] = ref
        if "full" in families:
            result.full[m] = evaluated["full"][m] - ref
            result.full_se[m] = (standard_error(examples["full"][m] - per_example_ref)
                                 if per_example is not None else None)
        if "per_layer" in families:
            result.per_layer[m] = {layer: summary(m, f"layer/{layer}", ref) for layer in layers}
        if "cumulative" in families:
            result.shallow[m] = [summary(m, f"shallow/{k}", ref) for k in range(1, len(layers) + 1)]
            result.deep[m] = [summary(m, f"deep/{k}", ref) for k in range(1, len(layers) + 1)]
            if windows:
                result.window[m] = [summary(m, f"window/{i}", ref)
                                    for i in range(1, len(windows) + 1)]
            if orders:
                result.random[m] = [[summary(m, f"random{r}/{k}", ref)
                                     for k in range(1, len(layers) + 1)]
                                    for r in range(len(orders))]
        if alphas:
            a, b = curve_pair
            values = [evaluated[f"curve/{alpha:.6g}"][m] for alpha in alphas]
            base = [(1 - alpha) * endpoint[a] + alpha * endpoint[b] for alpha in alphas]
            # The ends are the endpoints themselves (see `interpolate`), so they are exactly 0.
            barrier = [v - lin for v, lin in zip(values, base)]
            se_curve: list[float | None] = [None] * len(alphas)
            if per_example is not None:
                se_curve = [standard_error(examples[f"curve/{alpha:.6g}"][m]
                                           - ((1 - alpha) * per_example[a]
                                              + alpha * per_example[b]))
                            for alpha in alphas]
            result.curve[m] = Curve(pair=(a, b), alphas=alphas, values=values, barrier=barrier,
                                    max=max(barrier), se=se_curve)
    return result


# ---------------------------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------------------------
def _flat(state: StateDict, keys: Sequence[str]) -> torch.Tensor:
    parts = [state[k].detach().reshape(-1).to(torch.float64) for k in keys
             if state[k].is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _cosines(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine of each row with ``v`` (2-D ``v``: with each of its rows); 0 where a norm is 0."""
    if v.dim() == 2:
        dots, norms = rows @ v.T, torch.outer(rows.norm(dim=1), v.norm(dim=1))
    else:
        dots, norms = rows @ v, rows.norm(dim=1) * v.norm()
    return torch.where(norms > 0, dots / torch.where(norms > 0, norms, 1.0), 0.0)


def _distances(vectors: list[torch.Tensor], avg: torch.Tensor) -> dict[str, Any]:
    # One matrix product per scope instead of K(K-1)/2 Python-level pairs (K = 50 sampled
    # clients would be 1,225 pairs per layer and round). cdist without the matrix-product
    # shortcut subtracts first, so identical clients are exactly 0 apart.
    rows = torch.stack(vectors)
    out: dict[str, Any] = {
        "l2_to_avg": (rows - avg).norm(dim=1).tolist(),
        "cos_to_avg": _cosines(rows, avg).tolist(),
    }
    k = len(vectors)
    if k > 1:
        upper = torch.triu_indices(k, k, offset=1)
        l2 = torch.cdist(rows[None], rows[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        out["pairwise_l2"] = float(l2[upper[0], upper[1]].mean())
        out["pairwise_cos"] = float(_cosines(rows, rows)[upper[0], upper[1]].mean())
        out["pairwise_sq"] = float((l2[upper[0], upper[1]].double() ** 2).mean())
    else:
        out["pairwise_l2"], out["pairwise_cos"], out["pairwise_sq"] = 0.0, 1.0, 0.0
    out["num_params"] = int(rows.shape[1])
    return out


def layer_distances(
    states: Sequence[StateDict],
    weights: Sequence[float],
    groups: LayerGroups,
    reference: StateDict | Sequence[StateDict] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per layer and for the whole model (key ``"model"``): L2 distance and cosine similarity of
    each client to the p-weighted average, mean pairwise L2, squared L2 (``pairwise_sq``) and
    cosine between clients, the scope's ``num_params``, its ``param_share`` of the model's
    parameters and ``sq_distance_share`` of the model's ``pairwise_sq`` (None when the clients
    coincide), and (when ``reference`` is given) each client's L2 drift from the model it received.

    ``reference`` is one model for every client, or one per client: what each was sent. Under
    partial sharing a client receives only the shared layers; its drift is None in a scope
    (layer, or the whole model) it did not receive all of, and a scope no client received has
    no ``drift``.
    """
    _check_inputs(states, groups)
    average = average_states(states, weights)
    references = [reference] * len(states) if isinstance(reference, Mapping) else reference
    sent_alike: dict[int, list[int]] = {}  # clients sent the same model: one product per scope
    for i, ref in enumerate(references or []):
        sent_alike.setdefault(id(ref), []).append(i)
    out: dict[str, dict[str, Any]] = {}
    scopes = {**{layer: list(keys) for layer, keys in groups.items()},
              "model": [k for keys in groups.values() for k in keys]}
    for scope, keys in scopes.items():
        rows = [_flat(s, keys) for s in states]
        out[scope] = _distances(rows, _flat(average, keys))
        if references is not None:
            drift: list[float | None] = [None] * len(rows)
            for clients in sent_alike.values():
                ref = references[clients[0]]
                if all(k in ref for k in keys):
                    own = torch.stack([rows[i] for i in clients])
                    for i, d in zip(clients, (own - _flat(ref, keys)).norm(dim=1).tolist()):
                        drift[i] = d
            if any(d is not None for d in drift):
                out[scope]["drift"] = drift
    # Each scope's share of the parameters and of the mean squared pairwise distance (squared
    # distances add over layers): is a layer's barrier more than its size?
    total = out["model"]
    for entry in out.values():
        entry["param_share"] = entry["num_params"] / total["num_params"]
        entry["sq_distance_share"] = (entry["pairwise_sq"] / total["pairwise_sq"]
                                      if total["pairwise_sq"] > 0 else None)
    return out
