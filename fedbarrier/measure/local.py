"""Local barriers (BARRIERS.md, Version 2): what adopting the average of a layer set costs one
client on its own data. State dicts, an evaluator on the client's sample in; numbers out.

For client k with returned model theta_k and the round's p-weighted average avg = sum_j p_j theta_j
(all layers, whatever the strategy then aggregates), theta_bar_S^(k) takes avg on the layers in S
and theta_k everywhere else, and

    B^loc_S(k) = L_{D_k}(theta_bar_S^(k)) - L_{D_k}(theta_k),

with se = sd(delta) / sqrt(n) (ddof = 1), delta(x) = l(theta_bar_S^(k), x) - l(theta_k, x), over
the n examples of k's sample D_k. Families: ``full`` (S = all layers), ``per_layer`` (S = {l_i}),
``cumulative`` (shallow S_j = {l_1..l_j} and deep S_j = {l_{L-j+1}..l_L}, j = 1..L).

``local_barriers`` returns one client's JSON-ready record::

    {"n": n, "layers": [...], "families": [...],
     "endpoint": {metric: L_{D_k}(theta_k)},
     "full": {metric: value},                "full_se": {metric: se},
     "per_layer": {metric: {layer: value}},  "per_layer_se": {metric: {layer: se}},
     "shallow": {metric: [value, j = 1..L]}, "shallow_se": {metric: [se, ...]},
     "deep": {metric: [value, j = 1..L]},    "deep_se": {metric: [se, ...]},
     "evaluated": {variant: {metric: value}}, "num_evaluated": number of distinct models}

(a family's two keys only when it is measured; cumulative lists are indexed by j - 1).
``summarize_local`` summarizes such records across clients. When D_k is the server's sample D,
every value equals the self-referenced B~_S^(k) of ``measure_barriers`` exactly: both subtract
the same two scores of the same models.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from fedbarrier.measure.barriers import (
    METRICS,
    EvaluateMany,
    LayerGroups,
    StateDict,
    _check_inputs,
    _cumulative,
    mix_layers,
    normalize_weights,
    score_variants,
    standard_error,
)

LOCAL_FAMILIES = ("full", "per_layer", "cumulative")
ClientId = TypeVar("ClientId", bound=Hashable)
QUANTILES = (0.1, 0.5, 0.9)


def local_barriers(
    own_state: StateDict,
    average_state: StateDict,
    groups: LayerGroups,
    evaluate_many: EvaluateMany,
    *,
    families: Sequence[str] = LOCAL_FAMILIES,
    metrics: Sequence[str] = METRICS,
) -> dict[str, Any]:
    """One client's local barriers B^loc_S(k) with their standard errors (module docstring).

    Parameters
    ----------
    own_state
        theta_k, the model the client returned this round (never modified).
    average_state
        The round's p-weighted average of all returned models, e.g.
        ``barriers.average_states(states, weights)``.
    groups
        Ordered layers, input to output: ``{layer: [state-dict keys]}`` covering every key.
    evaluate_many
        Scores models on the client's sample D_k and returns per-example values (``"examples"``,
        as :class:`fedbarrier.measure.evaluator.ModelEvaluator` does); variants share tensors
        with the inputs, so the evaluator deduplicates and shares activations.
    families
        Subset of ``("full", "per_layer", "cumulative")``. The endpoint is always scored.

    Raises ValueError when the sample has fewer than 2 examples (no se; callers record a skip)
    or the evaluator gives no per-example values.
    """
    unknown = set(families) - set(LOCAL_FAMILIES)
    if unknown:
        raise ValueError(f"unknown local barrier families {sorted(unknown)}; "
                         f"allowed: {LOCAL_FAMILIES}")
    if set(average_state) != set(own_state):
        missing = sorted(set(own_state) - set(average_state))
        extra = sorted(set(average_state) - set(own_state))
        raise ValueError(f"the average has other state-dict keys than the client's model "
                         f"(missing {missing}, unknown {extra})")
    # Key order carries no meaning (an average may arrive in pieces): take the model's.
    average_state = {k: average_state[k] for k in own_state}
    _check_inputs([own_state, average_state], groups)
    size = getattr(evaluate_many, "num_examples", None)
    if size is not None and size < 2:
        raise ValueError(f"local barriers need at least 2 examples, the sample has {size}")
    layers = list(groups)

    variants: dict[str, dict[str, torch.Tensor]] = {"endpoint": dict(own_state)}
    if "full" in families:
        variants["full"] = dict(average_state)
    if "per_layer" in families:
        for layer in layers:
            variants[f"layer/{layer}"] = mix_layers(own_state, average_state, groups, [layer])
    if "cumulative" in families:
        for name, order in (("shallow", layers), ("deep", layers[::-1])):
            for j, layer_set in enumerate(_cumulative(order), start=1):
                variants[f"{name}/{j}"] = mix_layers(own_state, average_state, groups, layer_set)

    evaluated, examples, num_evaluated = score_variants(variants, evaluate_many, metrics)
    missing = [m for m in metrics if m not in examples["endpoint"]]
    if missing:
        raise ValueError(f"local barriers need per-example values; the evaluator gave none for "
                         f"{missing}")
    n = len(examples["endpoint"][metrics[0]]) if metrics else 0
    if n < 2:
        raise ValueError(f"local barriers need at least 2 examples, the sample has {n}")

    def value(name: str, m: str) -> float:
        return evaluated[name][m] - evaluated["endpoint"][m]

    def se(name: str, m: str) -> float | None:
        return standard_error(examples[name][m] - examples["endpoint"][m])

    record: dict[str, Any] = {"n": n, "layers": layers, "families": list(families),
                              "endpoint": {m: evaluated["endpoint"][m] for m in metrics}}
    if "full" in families:
        record["full"] = {m: value("full", m) for m in metrics}
        record["full_se"] = {m: se("full", m) for m in metrics}
    if "per_layer" in families:
        record["per_layer"] = {m: {layer: value(f"layer/{layer}", m) for layer in layers}
                               for m in metrics}
        record["per_layer_se"] = {m: {layer: se(f"layer/{layer}", m) for layer in layers}
                                  for m in metrics}
    if "cumulative" in families:
        for name in ("shallow", "deep"):
            sets = range(1, len(layers) + 1)
            record[name] = {m: [value(f"{name}/{j}", m) for j in sets] for m in metrics}
            record[f"{name}_se"] = {m: [se(f"{name}/{j}", m) for j in sets] for m in metrics}
    record["evaluated"] = evaluated
    record["num_evaluated"] = num_evaluated
    return record


def _stats(values: Sequence[float], p: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    q = np.quantile(arr, QUANTILES)  # numpy's default "linear" method, unweighted
    return {"mean": float(np.dot(p, arr)), "max": float(arr.max()),
            "q10": float(q[0]), "q50": float(q[1]), "q90": float(q[2])}


def summarize_local(
    per_client: Mapping[ClientId, Mapping[str, Any]], weights: Mapping[ClientId, float]
) -> dict[str, Any]:
    """Summaries of ``local_barriers`` records across the participants.

    For every value (``endpoint``, ``full``, ``per_layer``, ``shallow``, ``deep``; not the ses)
    the p-weighted mean (p = ``weights`` of the clients in ``per_client``, e.g. example counts,
    renormalized over them, so a skipped client simply is not passed), the max, and the 10, 50
    and 90 % quantiles over clients (``numpy.quantile``, default ``linear`` method, unweighted).
    Returns ``{"clients": [ids], "weights": [p], family: same nesting as a record with each
    value replaced by {"mean", "max", "q10", "q50", "q90"}}``.
    """
    if not per_client:
        raise ValueError("no local barrier records to summarize")
    ids = list(per_client)
    missing = [cid for cid in ids if cid not in weights]
    if missing:
        raise ValueError(f"no weight for clients {missing}")
    p = normalize_weights([weights[cid] for cid in ids], len(ids))
    records = [per_client[cid] for cid in ids]
    first = records[0]
    for cid, rec in zip(ids, records):
        if rec.get("layers") != first.get("layers") or rec.get("families") != first.get("families"):
            raise ValueError(f"client {cid}'s record has other layers or families than "
                             f"client {ids[0]}'s")
    out: dict[str, Any] = {"clients": ids, "weights": p}
    for family in ("endpoint", "full", "per_layer", "shallow", "deep"):
        if family not in first:
            continue
        out[family] = {}
        for m, entry in first[family].items():
            if isinstance(entry, Mapping):  # per_layer: {layer: value}
                out[family][m] = {key: _stats([r[family][m][key] for r in records], p)
                                  for key in entry}
            elif isinstance(entry, list):  # cumulative: [value per j]
                out[family][m] = [_stats([r[family][m][j] for r in records], p)
                                  for j in range(len(entry))]
            else:
                out[family][m] = _stats([r[family][m] for r in records], p)
    return out
