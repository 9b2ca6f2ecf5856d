"""Figures of where the data lives: each client's local barriers, and which layers each client adopted.

Local barriers (BARRIERS.md, Version 2) are measured by every client on its own data; their records
(split ``local-train``/``local-test``) keep every client's values in ``by_client``. A barrier-aware
strategy records in ``metrics.jsonl`` which layers each client adopted from the average
(``adopted_layers``). Drawn on ``matplotlib.figure.Figure`` like every other run figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fedbarrier.plots.drawing import DIVERGING, _heatmap, _save, _symmetric_norm
from fedbarrier.plots.records import (
    Record,
    barrier_unit,
    client_ids,
    client_value,
    client_weights,
    layer_order,
    safe_name,
)

Z = 2.0  # a barrier is "significantly positive" when value > Z * se (BARRIERS.md, Uncertainty)
MAX_ROW_LABELS = 40  # label every client up to this many rows, then thin the labels out
ADOPTED, KEPT, ABSENT = "#2166ac", "white", "0.85"


def _fmt(metric: str) -> str:
    return ".2f" if metric == "loss" else ".1f"


def _thin_rows(ax: Axes, labels: Sequence[str]) -> None:
    """Keep at most MAX_ROW_LABELS evenly spaced row labels (a hundred clients do not fit)."""
    if len(labels) > MAX_ROW_LABELS:
        step = math.ceil(len(labels) / MAX_ROW_LABELS)
        ax.set_yticks(range(0, len(labels), step), labels=list(labels)[::step], fontsize="small")


def _rotate_long(ax: Axes, labels: Sequence[str], chars: int = 6) -> None:
    if max(map(len, labels), default=0) > chars:
        for text in ax.get_xticklabels():
            text.set_rotation(90)


def _last_with_clients(recs: list[Record], metric: str) -> Record | None:
    """The last record in which some client reported a per-layer local barrier for ``metric``."""
    for rec in reversed(recs):
        clients = rec.get("by_client")
        if isinstance(clients, Mapping) and any(
                isinstance(c, Mapping) and (c.get("per_layer") or {}).get(metric) for c in clients.values()):
            return rec
    return None


def client_grids(rec: Record, metric: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(client ids, layers, values, ses) of one local record: clients x (layers + the full barrier).

    The last column is the full barrier (all layers averaged); absent values and ses are NaN.
    """
    ids, layers = client_ids(rec), layer_order([rec])
    by_client = rec["by_client"]
    values = np.full((len(ids), len(layers) + 1), np.nan)
    ses = np.full_like(values, np.nan)
    for i, cid in enumerate(ids):
        client = by_client[cid] if isinstance(by_client[cid], Mapping) else {}
        for j, layer in enumerate(layers):
            values[i, j] = client_value(client, "per_layer", metric, layer)
            ses[i, j] = client_value(client, "per_layer", metric, layer, se=True)
        values[i, -1] = client_value(client, "full", metric)
        ses[i, -1] = client_value(client, "full", metric, se=True)
    return ids, layers, values, ses


def plot_local_clients(recs: list[Record], split: str, metric: str, out: Path) -> Path | None:
    """Each client's per-layer local barrier in the last measured round (clients x layers).

    A narrow second panel holds each client's full local barrier on its own colour scale (it is
    often several times the single-layer values and would wash out their colours). Cells are
    starred where the value exceeds Z standard errors.
    """
    rec = _last_with_clients(recs, metric)
    if rec is None:
        return None
    ids, layers, values, ses = client_grids(rec, metric)
    if not ids or not layers:
        return None
    p = client_weights(rec)
    rows = [f"{cid} (p {p[cid]:.2g})" if math.isfinite(p.get(cid, math.nan)) else cid for cid in ids]
    with np.errstate(invalid="ignore"):
        marks = values > Z * ses  # NaN se (not recorded) never marks
    height = min(2.4 + 0.3 * len(ids), 16.0)
    cell = 0.55 if len(layers) <= 25 else max(0.1, 12.0 / len(layers))
    width = min(3.6 + 0.07 * max(map(len, rows)) + cell * len(layers) + 1.6, 22.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[max(len(layers), 2), 1.2])
    image = _heatmap(left, values[:, :-1], rows, layers, norm=_symmetric_norm(values[:, :-1]),
                     cmap=DIVERGING, fmt=_fmt(metric), marks=marks[:, :-1])
    _rotate_long(left, layers)
    fig.colorbar(image, ax=left, label=f"single-layer local {barrier_unit(metric)}")
    left.set(xlabel="layer adopted from the average (input at left)", ylabel="client (weight p)")
    left.set_title("one layer averaged", fontsize="medium")
    full = values[:, -1:]
    image = _heatmap(right, full, rows, ["full"], norm=_symmetric_norm(full), cmap=DIVERGING,
                     fmt=_fmt(metric), marks=marks[:, -1:])
    fig.colorbar(image, ax=right, label=f"full local {barrier_unit(metric)}")
    right.set_title("all layers", fontsize="medium")
    for ax in (left, right):
        _thin_rows(ax, rows)
    star = f"; * = value > {Z:g} se" if np.isfinite(ses).any() else ""
    fig.suptitle(f"local barrier per client, {split} split, {metric}, round {rec.get('round')}\n"
                 f"(each client on its own data{star})", fontsize="medium")
    return _save(fig, out / f"local_clients_{safe_name(split)}_{safe_name(metric)}.png")


# ------------------------------------------------------------------------------------- adopted layers


def adoption_grid(metrics: list[Record],
                  layers: Sequence[str]) -> tuple[list[int], list[str], list[str], np.ndarray]:
    """(rounds, clients, layers, grid) of the adopted-layer records in ``metrics.jsonl``.

    ``grid[c, l, r]`` is 1 when client c adopted layer l in round r, 0 when it took part in round r
    (it has an entry) without adopting l, NaN when it has no entry that round. Layers: ``layers``
    (model order) first, then any other adopted name in order of first appearance.
    """
    recs = sorted((m for m in metrics if isinstance(m.get("round"), int)
                   and isinstance(m.get("adopted_layers"), Mapping)), key=lambda m: m["round"])
    names = list(layers)
    for rec in recs:
        for adopted in rec["adopted_layers"].values():
            names += [str(n) for n in adopted or () if str(n) not in names]
    ids = client_ids({"by_client": {str(c): None for rec in recs for c in rec["adopted_layers"]}})
    grid = np.full((len(ids), len(names), len(recs)), np.nan)
    for r, rec in enumerate(recs):
        for cid, adopted in rec["adopted_layers"].items():
            i = ids.index(str(cid))
            grid[i, :, r] = 0.0
            for name in adopted or ():
                grid[i, names.index(str(name)), r] = 1.0
    return [rec["round"] for rec in recs], ids, names, grid


def plot_adopted_layers(metrics: list[Record], layers: Sequence[str], out: Path) -> Path | None:
    """Which layers each client adopted from the average, every round (barrier-aware strategies).

    Top: clients x (layers . rounds), one block of columns per layer in model order, rounds left to
    right within a block. Bottom: the share of the round's clients that adopted each layer.
    """
    rounds, ids, names, grid = adoption_grid(metrics, layers)
    if not rounds or not ids or not names:
        return None
    n_rounds = len(rounds)
    flat = grid.reshape(len(ids), len(names) * n_rounds)  # layer-major: layer l spans l*R .. l*R+R-1
    present = np.isfinite(grid).sum(axis=0)
    share = np.where(present > 0, np.nansum(grid, axis=0) / np.maximum(present, 1), np.nan)
    cols = len(names) * n_rounds
    width = min(max(7.0, 2.5 + 0.07 * max(map(len, ids)) + 0.16 * cols), 22.0)
    height = min(2.4 + 0.22 * len(ids), 12.0) + 1.6 + 0.3 * len(names)
    fig = Figure(figsize=(width, height), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[min(len(ids), 40) + 4, len(names) + 3])

    cmap = ListedColormap([KEPT, ADOPTED]).with_extremes(bad=ABSENT)
    top.imshow(np.ma.masked_invalid(flat), aspect="auto", cmap=cmap, norm=Normalize(0, 1),
               interpolation="nearest")
    for block in range(1, len(names)):
        top.axvline(block * n_rounds - 0.5, color="0.2", linewidth=1.0)
    top.set_yticks(range(len(ids)), labels=ids, fontsize="small")
    _thin_rows(top, ids)
    top.set_xticks([b * n_rounds + (n_rounds - 1) / 2 for b in range(len(names))], labels=names,
                   fontsize="small")
    _rotate_long(top, names, chars=max(6, int(1.2 * n_rounds)))
    top.tick_params(axis="x", bottom=False, top=True, labelbottom=False, labeltop=True)
    span = f"rounds {rounds[0]}–{rounds[-1]}" if n_rounds > 1 else f"round {rounds[0]}"
    top.set(ylabel="client", xlabel=f"layer; within each block {span} left to right")
    fig.legend(handles=[Patch(facecolor=ADOPTED, label="adopted the average"),
                        Patch(facecolor=KEPT, edgecolor="0.5", label="kept its own"),
                        Patch(facecolor=ABSENT, label="no entry this round")],
               loc="outside lower center", ncols=3, fontsize="small", frameon=False)

    image = _heatmap(bottom, share, names, rounds, norm=Normalize(0, 1), cmap="Blues", fmt=".0%")
    fig.colorbar(image, ax=bottom, label="share of clients", format=matplotlib.ticker.PercentFormatter(1.0))
    bottom.set(xlabel="round", ylabel="layer (input at top)")
    bottom.set_title("share of the round's clients that adopted each layer", fontsize="medium")
    fig.suptitle("layers adopted from the average, per client and round", fontsize="medium")
    return _save(fig, out / "adopted_layers.png")
