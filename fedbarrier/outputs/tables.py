"""A run's records as pandas tables: one row per round, and tidy barrier and distance tables.

Pure functions: lists of records (as ``metrics.jsonl`` and ``barriers.jsonl`` hold them) in,
DataFrames out. docs/records.md says what every record key means; here each recorded barrier
number becomes one row, so that a notebook filters and groups instead of walking nested JSON:

========== =====================================================================================
column     meaning
========== =====================================================================================
round      the round
split      ``train``/``test`` (server-side) or ``local-train``/``local-test`` (each client on its data)
side       ``server`` or ``local``
aligned    True for the values after permutation alignment (``barriers.align``; server-side only:
           the record's ``aligned`` part), False otherwise
metric     ``loss`` or ``error`` (percentage points)
family     ``full``, ``per_layer``, ``shallow``, ``deep``, ``window``, ``random<r>``, ``curve``,
           ``endpoint`` (each model's own value), ``reference`` (E = sum_k p_k L(theta_k))
layer_set  the averaged layers, joined by ``+`` in model order of joining (``all`` for the
           whole model); for ``per_layer`` the layer itself
k          how many layers the set holds (cumulative families, windows: their size); else empty
alpha      the interpolation coefficient of a ``curve`` row; else empty
client     the client the number belongs to: the default client d of a server-side layer-set
           barrier, a client's own local barrier or endpoint; empty for statistics over clients
stat       ``barrier`` (B_S^(d), or a client's local barrier), ``self_referenced`` (B~_S^(d)),
           ``value`` (a full barrier, endpoint, reference, curve value), ``mean``, ``max``,
           ``q10``/``q50``/``q90`` (local summaries over clients), ``curve_barrier`` (a curve
           value minus the straight line between the endpoints)
value      the number
se         its standard error where the record has one (NaN otherwise)
========== =====================================================================================

A server-side ``mean`` row's se is the record's; a local ``mean`` row's is sqrt(sum_k p_k^2
se_k^2) over the clients (:func:`fedbarrier.plots.records.local_mean_se`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pandas as pd

from fedbarrier.plots.records import (
    aligned_record,
    client_ids,
    client_value,
    is_local,
    layer_order,
    local_mean_se,
    num,
)

Record = Mapping[str, Any]

BARRIER_COLUMNS = ["round", "split", "side", "aligned", "metric", "family", "layer_set", "k", "alpha",
                   "client", "stat", "value", "se"]
DISTANCE_COLUMNS = ["round", "aligned", "scope", "quantity", "client", "value"]
LOCAL_STATS = ("mean", "max", "q10", "q50", "q90")
ALL_LAYERS = "all"


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------
def metrics_table(records: Iterable[Record]) -> pd.DataFrame:
    """One row per round, indexed by ``round``; a key a round lacks is NaN there.

    Scalars become columns as they are; ``*_by_client`` maps become one column per client
    (``local_test_accuracy/3``); lists and other maps (``clients``, ``excluded_clients``,
    ``shared_layers``, ``adopted_layers``) stay Python objects in their column.
    """
    rows = []
    for rec in records:
        row: dict[str, Any] = {}
        for key, value in rec.items():
            if key.endswith("_by_client") and isinstance(value, Mapping):
                base = key.removesuffix("_by_client")
                row.update({f"{base}/{cid}": num(v) for cid, v in value.items()})
            else:
                row[key] = math.nan if value is None else value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "round" in frame:
        frame = frame.set_index("round", drop=False).rename_axis(None)
    return frame


# ---------------------------------------------------------------------------------------------
# barriers.jsonl
# ---------------------------------------------------------------------------------------------
def barrier_table(records: Iterable[Record]) -> pd.DataFrame:
    """The tidy barrier table: one row per recorded barrier number (module docstring).

    Skipped measurements (``{"round", "split", "skipped"}``) have no numbers and no rows; the raw
    scores under ``evaluated`` are the inputs of these numbers, not rows (docs/records.md).
    """
    rows = []
    for rec in records:
        if "skipped" in rec:
            continue
        rows += _record_rows(rec)
        if isinstance(rec.get("aligned"), Mapping):  # endpoints and E are the unaligned ones
            rows += [{**row, "split": rec["split"], "aligned": True}
                     for row in _record_rows(aligned_record(rec))
                     if row["family"] not in ("endpoint", "reference")]
    frame = pd.DataFrame(rows, columns=BARRIER_COLUMNS)
    for column in ("round", "k", "client"):
        frame[column] = frame[column].astype("Int64")
    for column in ("alpha", "value", "se"):
        frame[column] = frame[column].astype(float)
    return frame


def distance_table(records: Iterable[Record]) -> pd.DataFrame:
    """The distances of every measured round, once per round (each split's record repeats them).

    ``scope`` is a layer or ``model``; ``quantity`` one of ``l2_to_avg``, ``cos_to_avg``,
    ``drift`` (one row per client) or ``pairwise_l2``, ``pairwise_cos`` (client empty);
    ``aligned`` rows are the distances after permutation alignment.
    """
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for rec in records:
        if is_local(rec) or rec.get("round") in seen:
            continue
        seen.add(rec["round"])
        clients = list(rec.get("clients") or [])
        aligned = rec.get("aligned") if isinstance(rec.get("aligned"), Mapping) else {}
        for is_aligned, distances in ((False, rec.get("distances")), (True, aligned.get("distances"))):
            if not isinstance(distances, Mapping):
                continue
            base = {"round": rec["round"], "aligned": is_aligned}
            for scope, entry in distances.items():
                for quantity, value in entry.items():
                    if isinstance(value, list):
                        rows += [{**base, "scope": scope, "quantity": quantity, "client": cid,
                                  "value": num(v)} for cid, v in zip(clients, value)]
                    else:
                        rows.append({**base, "scope": scope, "quantity": quantity, "client": None,
                                     "value": num(value)})
    frame = pd.DataFrame(rows, columns=DISTANCE_COLUMNS)
    for column in ("round", "client"):
        frame[column] = frame[column].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    return frame


def _record_rows(rec: Record) -> Iterator[dict[str, Any]]:
    local = is_local(rec)
    base = {"round": rec["round"], "split": rec["split"], "side": "local" if local else "server",
            "aligned": False}
    sets = _layer_sets(rec)
    for family, metric, layer_set, k, entry in _families(rec, sets):
        where = {**base, "metric": metric, "family": family, "layer_set": layer_set, "k": k}
        if local:
            yield from _local_rows(rec, where, family, entry)
        elif family == "full":
            yield {**where, "stat": "value", "value": num(entry),
                   "se": _get(rec.get("full_se"), metric)}
        else:
            yield from _summary_rows(rec, where, entry)
    if not local:
        yield from _server_extras(rec, base)


def _layer_sets(rec: Record) -> dict[str, list[list[str]]]:
    """The layer set of each cumulative family's entries, in record order."""
    layers = layer_order([dict(rec)])
    sets = {"shallow": [layers[:k] for k in range(1, len(layers) + 1)],
            "deep": [layers[::-1][:k] for k in range(1, len(layers) + 1)]}
    window = rec.get("window")
    if isinstance(window, Mapping) and window.get("size"):
        size = int(window["size"])
        sets["window"] = [layers[i:i + size] for i in range(len(layers) - size + 1)]
    random = rec.get("random")
    if isinstance(random, Mapping):
        for r, order in enumerate(random.get("orders") or []):
            sets[f"random{r}"] = [list(order[:k]) for k in range(1, len(order) + 1)]
    return sets


def _families(rec: Record, sets: dict[str, list[list[str]]]
              ) -> Iterator[tuple[str, str, str, int | None, Any]]:
    """(family, metric, layer_set, k, entry) for each barrier entry of a record."""
    for metric, value in (rec.get("full") or {}).items():
        yield "full", metric, ALL_LAYERS, None, value
    if is_local(rec):  # a server-side record's endpoints are per client (_server_extras)
        for metric, value in (rec.get("endpoint") or {}).items():
            yield "endpoint", metric, ALL_LAYERS, None, value
    for metric, by_layer in (rec.get("per_layer") or {}).items():
        for layer, entry in by_layer.items():
            yield "per_layer", metric, layer, 1, entry
    cumulative = [("shallow", rec.get("shallow")), ("deep", rec.get("deep")),
                  ("window", rec.get("window"))]
    random = rec.get("random")
    if isinstance(random, Mapping):
        for metric, orders in random.items():
            if metric == "orders":
                continue
            for r, entries in enumerate(orders):
                for i, entry in enumerate(entries):
                    chosen = sets[f"random{r}"][i]
                    yield f"random{r}", metric, "+".join(chosen), len(chosen), entry
    for family, by_metric in cumulative:
        for metric, entries in (by_metric or {}).items():
            if metric == "size":
                continue
            for i, entry in enumerate(entries):
                chosen = sets[family][i] if i < len(sets.get(family, [])) else []
                yield family, metric, "+".join(chosen), len(chosen) or None, entry


def _summary_rows(rec: Record, where: dict[str, Any], entry: Any) -> Iterator[dict[str, Any]]:
    """A server-side summary: per default client (endpoint- and self-referenced), mean and max."""
    if not isinstance(entry, Mapping):
        return
    se = entry.get("se") if isinstance(entry.get("se"), Mapping) else {}
    defaults = list(rec.get("default_clients") or [])
    for stat, key in (("barrier", "per_default"), ("self_referenced", "self_referenced")):
        values, ses = entry.get(key) or [], se.get(key) or []
        for i, (cid, value) in enumerate(zip(defaults, values)):
            yield {**where, "client": cid, "stat": stat, "value": num(value),
                   "se": num(ses[i]) if i < len(ses) else math.nan}
    yield {**where, "stat": "mean", "value": num(entry.get("mean")), "se": num(se.get("mean"))}
    yield {**where, "stat": "max", "value": num(entry.get("max")), "se": math.nan}


def _server_extras(rec: Record, base: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Endpoints, the reference E and the interpolation curve of a server-side record."""
    clients = list(rec.get("clients") or [])
    for metric, values in (rec.get("endpoint") or {}).items():
        for cid, value in zip(clients, values):
            yield {**base, "metric": metric, "family": "endpoint", "layer_set": ALL_LAYERS,
                   "client": cid, "stat": "value", "value": num(value), "se": math.nan}
    for metric, value in (rec.get("reference") or {}).items():
        yield {**base, "metric": metric, "family": "reference", "layer_set": ALL_LAYERS,
               "stat": "value", "value": num(value), "se": math.nan}
    for metric, curve in (rec.get("curve") or {}).items():
        where = {**base, "metric": metric, "family": "curve", "layer_set": ALL_LAYERS}
        ses = curve.get("se") or []
        for i, alpha in enumerate(curve.get("alphas") or []):
            yield {**where, "alpha": alpha, "stat": "value", "value": num(curve["values"][i]),
                   "se": math.nan}
            yield {**where, "alpha": alpha, "stat": "curve_barrier", "value": num(curve["barrier"][i]),
                   "se": num(ses[i]) if i < len(ses) else math.nan}
        yield {**where, "stat": "max", "value": num(curve.get("max")), "se": math.nan}


def _local_rows(rec: Record, where: dict[str, Any], family: str, entry: Any
                ) -> Iterator[dict[str, Any]]:
    """A local summary over clients (mean, max, quantiles), then each client's own value and se."""
    metric, key = where["metric"], _client_key(where)
    if isinstance(entry, Mapping):
        for stat in LOCAL_STATS:
            if stat in entry:
                se = local_mean_se(rec, family, metric, key) if stat == "mean" else math.nan
                yield {**where, "stat": stat, "value": num(entry[stat]), "se": se}
    by_client = rec.get("by_client") or {}
    for cid in client_ids(rec):
        report = by_client[cid] if cid in by_client else by_client.get(int(cid))
        if isinstance(report, Mapping):
            yield {**where, "client": int(cid), "stat": "value" if family == "endpoint" else "barrier",
                   "value": client_value(report, family, metric, key),
                   "se": client_value(report, family, metric, key, se=True)}


def _client_key(where: Mapping[str, Any]) -> str | int | None:
    """How a client's report indexes an entry: a layer (per_layer), k - 1 (cumulative), none (full)."""
    if where["family"] == "per_layer":
        return str(where["layer_set"])
    if where["family"] in ("shallow", "deep"):
        return int(where["k"]) - 1
    return None


def _get(entry: Any, key: str) -> float:
    return num(entry.get(key)) if isinstance(entry, Mapping) else math.nan
