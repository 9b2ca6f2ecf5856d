"""Reading barrier records for figures and tables: numbers, layer order, local records, standard errors.

Server-side records (split ``train``/``test``) hold one value per barrier and, from version 2 of the
contract, ``full_se`` beside ``full`` (see :mod:`fedbarrier.measure.barriers`). Local records (split
``local-train``/``local-test``, :mod:`fedbarrier.measure.local`) hold summaries over the clients
(``{"mean", "max", "q10", "q50", "q90"}``) and every client's own values and ses in ``by_client``.
Absent or null standard errors are NaN here, so a caller draws no error bar rather than failing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

Record = dict[str, Any]
LOCAL_PREFIX = "local-"


def num(value: Any) -> float:
    """A float, with null (how NaN is written) and anything non-numeric as NaN."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def is_local(rec_or_split: Record | str) -> bool:
    """Whether a record (or split name) holds local barriers, measured by the clients on their own data."""
    split = rec_or_split if isinstance(rec_or_split, str) else str(rec_or_split.get("split", ""))
    return split.startswith(LOCAL_PREFIX)


def safe_name(name: str) -> str:
    """A file-name-safe version of a split or metric name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def barrier_unit(metric: str) -> str:
    """Colour-bar / axis label of a barrier: error barriers are differences of percentages."""
    return {"loss": "loss barrier", "error": "error barrier (pp)"}.get(metric, f"{metric} barrier")


def layer_order(recs: list[Record]) -> list[str]:
    """Layer names in model order, the latest record first to answer.

    Server-side records carry ``layers``; a local record carries them in each client's record
    (``by_client``), and failing that in the order of its ``per_layer`` summary.
    """
    for rec in reversed(recs):
        if rec.get("layers"):
            return [str(name) for name in rec["layers"]]
        for client in (rec.get("by_client") or {}).values():
            if isinstance(client, Mapping) and client.get("layers"):
                return [str(name) for name in client["layers"]]
    for rec in reversed(recs):
        for summary in (rec.get("per_layer") or {}).values():
            if isinstance(summary, Mapping) and summary:
                return [str(name) for name in summary]
    return []


def client_weights(rec: Record) -> dict[str, float]:
    """``{client id: p_k}`` of a local record (``clients`` and ``weights``, in order); {} if they disagree."""
    clients, weights = rec.get("clients") or [], rec.get("weights") or []
    if len(clients) != len(weights):
        return {}
    return {str(c): num(w) for c, w in zip(clients, weights)}


def client_ids(rec: Record) -> list[str]:
    """The ids in a local record's ``by_client``, in numeric order where they are numbers."""
    ids = [str(c) for c in (rec.get("by_client") or {})]
    return sorted(ids, key=lambda c: (0, int(c), "") if c.lstrip("-").isdigit() else (1, 0, c))


def client_value(client: Mapping[str, Any], family: str, metric: str, key: str | int | None = None, *,
                 se: bool = False) -> float:
    """One client's local barrier (or its se): ``full`` (key None), ``per_layer`` (key = layer) or
    ``shallow``/``deep`` (key = j - 1); NaN where absent."""
    entry: Any = (client.get(f"{family}_se" if se else family) or {})
    entry = entry.get(metric) if isinstance(entry, Mapping) else None
    if key is None:
        return num(entry)
    if isinstance(entry, Mapping):
        return num(entry.get(key))
    if isinstance(entry, list) and isinstance(key, int) and 0 <= key < len(entry):
        return num(entry[key])
    return math.nan


def local_mean_se(rec: Record, family: str, metric: str, key: str | int | None = None) -> float:
    """Standard error of a local record's p-weighted mean over clients: sqrt(sum_k p_k^2 se_k^2).

    The clients' samples are disjoint, so their estimates are independent and the variances of
    p_k B_k add. NaN when the record has no ``by_client``, its weights do not match, or any
    client's se is absent or null.
    """
    p, by_client = client_weights(rec), rec.get("by_client")
    if not p or not isinstance(by_client, Mapping) or set(map(str, by_client)) != set(p):
        return math.nan
    total = 0.0
    for cid, client in by_client.items():
        se = client_value(client, family, metric, key, se=True) if isinstance(client, Mapping) else math.nan
        if not math.isfinite(se) or not math.isfinite(p[str(cid)]):
            return math.nan
        total += (p[str(cid)] * se) ** 2
    return math.sqrt(total)


def full_value(rec: Record, metric: str) -> float:
    """The full barrier of a record: the value (server-side) or the p-weighted mean over clients (local)."""
    entry = (rec.get("full") or {}).get(metric) if isinstance(rec.get("full"), Mapping) else None
    return num(entry.get("mean")) if isinstance(entry, Mapping) else num(entry)


def full_se(rec: Record, metric: str) -> float:
    """se of :func:`full_value`: ``full_se`` (server-side) or :func:`local_mean_se` (local); NaN if absent."""
    if is_local(rec):
        return local_mean_se(rec, "full", metric)
    se = rec.get("full_se")
    return num(se.get(metric)) if isinstance(se, Mapping) else math.nan


def aligned_record(rec: Record) -> Record:
    """A record's values after permutation alignment (``barriers.align``), as a record of split
    ``<split>-aligned``: the record with its ``aligned`` part in place of the unaligned values.
    A server-side ``aligned`` part has no endpoints and no reference E: alignment keeps each
    model's function, so they are the record's."""
    aligned = rec.get("aligned") or {}
    return {**{k: v for k, v in rec.items() if k != "aligned"}, **aligned,
            "split": f"{rec['split']}-aligned"}
