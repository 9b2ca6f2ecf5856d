"""Figures of one finished (or interrupted) run directory: barriers, distances and accuracy over rounds.

Everything is drawn on ``matplotlib.figure.Figure`` (no pyplot registry), so it works headless and from
worker threads. Families the user disabled, and rounds that were not measured, are simply absent: the
matching plot is skipped rather than drawn empty. The drawing primitives (heatmaps, colour scales, saving)
are in :mod:`fedbarrier.plots.drawing`; the figures of local barriers per client and of adopted layers in
:mod:`fedbarrier.plots.local`; reading records (local ones, standard errors) in
:mod:`fedbarrier.plots.records`.

Local splits (``local-train``, ``local-test``) get the same per-layer and cumulative heatmaps as the
server's splits, of the p-weighted mean over clients, each client on its own data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from fedbarrier.plots.drawing import ANNOTATE_MAX as ANNOTATE_MAX  # re-exported
from fedbarrier.plots.drawing import DIVERGING, _heat_size, _heatmap, _save, _symmetric_norm
from fedbarrier.plots.drawing import DPI as DPI  # re-exported
from fedbarrier.plots.drawing import MAX_XTICKS as MAX_XTICKS  # re-exported
from fedbarrier.plots.local import plot_adopted_layers, plot_local_clients
from fedbarrier.plots.records import (
    aligned_record,
    barrier_unit,
    full_se,
    full_value,
    is_local,
    layer_order,
    num,
    safe_name,
)
from fedbarrier.runtime.rundir import BARRIERS_FILE, METRICS_FILE, read_jsonl

KNOWN_METRICS = ("loss", "error")
Record = dict[str, Any]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write every plot the run's records support into ``RUN_DIR/plots/``.

    Returns
    -------
    list of Path
        The PNGs written, in a stable order; plots whose data are absent are skipped.
    """
    run = Path(run_dir)
    out = run / "plots"
    splits = _by_split(read_jsonl(run / BARRIERS_FILE))
    metrics = read_jsonl(run / METRICS_FILE)
    paths: list[Path | None] = []
    for split, recs in splits.items():
        for metric in _metrics(recs, "per_layer"):
            paths.append(_plot_per_layer(recs, split, metric, out))
        for metric in _metrics(recs, "shallow"):
            paths.append(_plot_cumulative(recs, split, metric, out))
        if is_local(split):
            for metric in _metrics(recs, "per_layer"):
                paths.append(plot_local_clients(recs, split, metric, out))
    paths.append(_plot_full(splits, out))
    for split, recs in splits.items():
        for metric in _metrics(recs, "curve"):
            paths.append(_plot_curves(recs, split, metric, out))
    paths.append(_plot_distances(splits, out))
    paths.append(_plot_accuracy(metrics, out))
    paths.append(plot_adopted_layers(metrics, _layers([r for recs in splits.values() for r in recs]), out))
    return [p for p in paths if p is not None]


# ----------------------------------------------------------------------------------------------- data


_num, _safe, _unit = num, safe_name, barrier_unit  # the names the comparison plots import


def _split_order(split: str) -> tuple[bool, bool, str]:
    """Server splits before local ones; within each, the training data first (aligned after)."""
    return is_local(split), split.removeprefix("local-").removesuffix("-aligned") != "train", split


def _by_split(records: list[Record]) -> dict[str, list[Record]]:
    """Records per split, sorted by round; a repeated (round, split) keeps the last one written.

    Order: train, test, local-train, local-test (then any other split).
    """
    latest: dict[tuple[str, int], Record] = {}
    for rec in records:
        if isinstance(rec.get("round"), int) and rec.get("split"):
            latest[(str(rec["split"]), rec["round"])] = rec
            if isinstance(rec.get("aligned"), dict):  # drawn as a split of its own, beside it
                latest[(f"{rec['split']}-aligned", rec["round"])] = aligned_record(rec)
    out: dict[str, list[Record]] = {}
    for (split, _), rec in sorted(latest.items(), key=lambda kv: (_split_order(kv[0][0]), kv[0][1])):
        out.setdefault(split, []).append(rec)
    return out


def _family(rec: Record, family: str) -> dict[str, Any]:
    """A record's family dict; a disabled family may be missing, null or empty."""
    value = rec.get(family)
    return value if isinstance(value, dict) else {}


def _metrics(recs: list[Record], family: str) -> list[str]:
    """Metrics measured for ``family`` in any record, loss and error first."""
    found = {m for rec in recs for m, v in _family(rec, family).items() if _present(v)}
    return [m for m in KNOWN_METRICS if m in found] + sorted(found - set(KNOWN_METRICS))


def _present(value: Any) -> bool:
    """Whether a family's entry holds a measurement (0.0 does; null, {} and [] do not)."""
    return value is not None and not (isinstance(value, (dict, list)) and not value)


def _layers(recs: list[Record]) -> list[str]:
    """Layer names in model order (the latest record wins; all records of a run normally agree)."""
    return layer_order(recs)


def _grid(recs: list[Record], rows: Sequence[Any], cell: Callable[[Record, Any], Any]) -> np.ndarray:
    """A rows x records array of ``cell(record, row)`` means; absent cells are NaN."""
    grid = np.full((len(rows), len(recs)), np.nan)
    for j, rec in enumerate(recs):
        for i, row in enumerate(rows):
            entry = cell(rec, row)
            grid[i, j] = _num(entry.get("mean") if isinstance(entry, dict) else entry)
    return grid


def _measured(recs: list[Record], family: str, metric: str) -> list[Record]:
    """The records in which ``family`` holds ``metric``."""
    return [rec for rec in recs if _present(_family(rec, family).get(metric))]


def _over(split: str) -> str:
    """What a summary's mean averages over: the server's default clients, or clients on their own data."""
    return ("p-weighted mean over clients, each on its own data" if is_local(split)
            else "p-weighted mean over default clients")


def _sample(recs: list[Record]) -> str:
    """', n = N' when every record used the same subsample size (it is part of what was measured)."""
    sizes = {rec.get("n") for rec in recs}
    return f", n = {sizes.pop()}" if len(sizes) == 1 and None not in sizes else ""


def _plot_per_layer(recs: list[Record], split: str, metric: str, out: Path) -> Path | None:
    """Heatmap of the p-weighted mean single-layer barrier, layers x measured rounds."""
    recs, layers = _measured(recs, "per_layer", metric), _layers(recs)
    if not recs or not layers:
        return None
    grid = _grid(recs, layers, lambda rec, layer: rec["per_layer"][metric].get(layer))
    title = f"per-layer barrier, {split} split, {metric}\n({_over(split)}{_sample(recs)})"
    width, height = _heat_size(len(layers), len(recs), max(map(len, layers)))
    width = max(width, 0.6 + 0.08 * max(map(len, title.splitlines())))  # few rounds: the title fits
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    image = _heatmap(ax, grid, layers, [r["round"] for r in recs], norm=_symmetric_norm(grid),
                     cmap=DIVERGING, fmt=".2f" if metric == "loss" else ".1f")
    fig.colorbar(image, ax=ax, label=_unit(metric))
    ax.set(xlabel="round", ylabel="layer averaged (input at top)")
    ax.set_title(title, fontsize="medium")
    return _save(fig, out / f"per_layer_{_safe(split)}_{_safe(metric)}.png")


def _plot_cumulative(recs: list[Record], split: str, metric: str, out: Path) -> Path | None:
    """Shallow (first k layers) and deep (last k layers) cumulative barriers, one shared colour scale.

    Row i of both panels is bounded by layer i, so both read in model order: shallow row i averages
    layers 1..i ("≤ name"), deep row i averages layers i..L ("≥ name").
    """
    recs, layers = _measured(recs, "shallow", metric), _layers(recs)
    if not recs or not layers:
        return None
    n = len(layers)

    def shallow(rec: Record, i: int) -> Any:
        entries = rec["shallow"][metric]
        return entries[i] if i < len(entries) else None

    def deep(rec: Record, i: int) -> Any:
        entries = _family(rec, "deep").get(metric) or []
        return entries[n - 1 - i] if n - 1 - i < len(entries) else None

    grids = [_grid(recs, range(n), shallow), _grid(recs, range(n), deep)]
    labels = [[f"≤ {name}" for name in layers], [f"≥ {name}" for name in layers]]
    norm, rounds = _symmetric_norm(*grids), [r["round"] for r in recs]
    fig = Figure(figsize=_heat_size(n, len(recs), 2 + max(map(len, layers)), panels=2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, grid, rows, kind in zip(axes, grids, labels, ("shallow: first layers", "deep: last layers")):
        image = _heatmap(ax, grid, rows, rounds, norm=norm, cmap=DIVERGING,
                         fmt=".2f" if metric == "loss" else ".1f")
        ax.set(xlabel="round", ylabel=f"layers averaged ({kind.split(':')[0]})")
        ax.set_title(kind, fontsize="medium")
    fig.colorbar(image, ax=list(axes), label=_unit(metric))
    fig.suptitle(f"cumulative barrier, {split} split, {metric} "
                 f"({_over(split)}{_sample(recs)})", fontsize="medium")
    return _save(fig, out / f"cumulative_{_safe(split)}_{_safe(metric)}.png")


def _plot_full(splits: dict[str, list[Record]], out: Path) -> Path | None:
    """Full barrier (and the pairwise curve's max) over rounds: loss and error on their own axes.

    ±se error bars where the records have standard errors (``full_se`` server-side; for a local split
    the se of the p-weighted mean over clients). A local split is drawn as its mean over clients,
    with the band between the 10 % and 90 % quantiles of the clients.
    """
    metrics = [m for m in KNOWN_METRICS if any(_measured(r, "full", m) for r in splits.values())]
    if not metrics:
        return None
    fig = Figure(figsize=(6.5 * len(metrics), 4.2), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        for colour, (split, recs) in enumerate(splits.items()):  # one colour per split, style per kind
            full = _measured(recs, "full", metric)
            if full:
                _full_series(ax, full, split, metric, f"C{colour}")
            curve = _measured(recs, "curve", metric)
            if curve:
                ax.plot([r["round"] for r in curve], [_num(r["curve"][metric].get("max")) for r in curve],
                        marker="s", linestyle="--", color=f"C{colour}",
                        label=f"{split}: max of pairwise curve")
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set(xlabel="round", ylabel=_unit(metric), title=f"full barrier, {metric}")
    legend: dict[str, Any] = {}  # one legend below the panels, by split: it would hide the curves
    for ax in fig.axes:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    order = list(splits)
    labels = sorted(legend, key=lambda label: (order.index(label.split(":")[0]), label))
    fig.legend([legend[label] for label in labels], labels, loc="outside lower center", fontsize="small",
               ncols=min(len(labels), 2 * len(metrics)), frameon=False)
    return _save(fig, out / "full_barrier.png")


def _full_series(ax: Any, recs: list[Record], split: str, metric: str, colour: str) -> None:
    """One split's full barrier over rounds, with ±se error bars when any se is recorded."""
    rounds = [r["round"] for r in recs]
    values = np.array([full_value(r, metric) for r in recs])
    ses = np.array([full_se(r, metric) for r in recs])
    local = is_local(split)
    label = f"{split}: full, mean over clients" if local else f"{split}: full (p-weighted FedAvg)"
    style = {"marker": "^" if local else "o", "linestyle": ":" if local else "-", "color": colour}
    if np.isfinite(ses).any():
        ax.errorbar(rounds, values, yerr=np.where(np.isfinite(ses), ses, 0.0), capsize=3,
                    label=f"{label} ± se", **style)
    else:
        ax.plot(rounds, values, label=label, **style)
    if local:
        quantiles = [[_num((r["full"][metric] or {}).get(q)) for r in recs] for q in ("q10", "q90")]
        if np.isfinite(quantiles).any():
            ax.fill_between(rounds, *quantiles, color=colour, alpha=0.12, linewidth=0,
                            label=f"{split}: 10–90 % of clients")


def _plot_curves(recs: list[Record], split: str, metric: str, out: Path) -> Path | None:
    """Barrier along the pairwise interpolation path for every measured round, coloured by round."""
    recs = _measured(recs, "curve", metric)
    if not recs:
        return None
    rounds = [r["round"] for r in recs]
    norm = Normalize(min(rounds) - (len(recs) == 1), max(rounds))  # a single round still gets a scale
    cmap = matplotlib.colormaps["viridis"]
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for rec in recs:
        curve = rec["curve"][metric]
        ax.plot([_num(a) for a in curve.get("alphas", [])], [_num(b) for b in curve.get("barrier", [])],
                marker=".", color=cmap(norm(rec["round"])))
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="round")
    pairs = {tuple(r["curve"][metric].get("pair") or ()) for r in recs}
    pair = f", clients {' vs '.join(map(str, pairs.pop()))}" if len(pairs) == 1 and () not in pairs else ""
    ax.set(xlabel="α (0 = first client, 1 = second)", ylabel=_unit(metric))
    ax.set_title(f"interpolation curve, {split} split, {metric}{pair}{_sample(recs)}", fontsize="medium")
    return _save(fig, out / f"curve_{_safe(split)}_{_safe(metric)}.png")


def _plot_distances(splits: dict[str, list[Record]], out: Path) -> Path | None:
    """Per-layer mean L2 distance to the average (heatmap) and whole-model pairwise L2 / cosine."""
    per_round: dict[int, Record] = {}
    for recs in splits.values():
        for rec in recs:  # the models are the same for every split: one record per round is enough
            if isinstance(rec.get("distances"), dict) and rec["distances"]:
                per_round.setdefault(rec["round"], rec)
    recs = [per_round[r] for r in sorted(per_round)]
    if not recs:
        return None
    layers = [name for name in _layers(recs) if any(name in r["distances"] for r in recs)]
    rounds = [r["round"] for r in recs]
    fig = Figure(figsize=_heat_size(max(len(layers), 8), len(recs), max(map(len, layers), default=5), 2),
                 layout="constrained")
    grid_spec = fig.add_gridspec(2, 2)
    if layers:
        grid = _grid(recs, layers, lambda rec, layer: np.nanmean(
            [_num(v) for v in (rec["distances"].get(layer) or {}).get("l2_to_avg") or [math.nan]]))
        ax = fig.add_subplot(grid_spec[:, 0])
        finite = grid[np.isfinite(grid)]
        norm = Normalize(0.0, float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        image = _heatmap(ax, grid, layers, rounds, norm=norm, cmap="viridis", fmt=".3g")
        fig.colorbar(image, ax=ax, label="mean L2 distance to average")
        ax.set(xlabel="round", ylabel="layer (input at top)", title="per layer, mean over clients")
    for row, key, label in ((0, "pairwise_l2", "L2 distance"), (1, "pairwise_cos", "cosine similarity")):
        ax = fig.add_subplot(grid_spec[row, 1])
        ax.plot(rounds, [_num((r["distances"].get("model") or {}).get(key)) for r in recs], marker="o")
        ax.set(xlabel="round", ylabel=label, title=f"whole model: mean pairwise {label}")
    fig.suptitle("distances between client models before aggregation", fontsize="medium")
    return _save(fig, out / "distances.png")


def _plot_accuracy(metrics: list[Record], out: Path) -> Path | None:
    """Global and mean local test accuracy, and training / global test loss, over rounds."""
    metrics = sorted((m for m in metrics if isinstance(m.get("round"), int)), key=lambda m: m["round"])
    if not metrics:
        return None
    rounds = [m["round"] for m in metrics]
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    panels = (("accuracy (%)", (("global_test_accuracy", "global test"),
                                ("local_test_accuracy", "mean local test"))),
              ("loss", (("train_loss", "train (mean over clients)"), ("global_test_loss", "global test"))))
    for ax, (ylabel, series) in zip(fig.subplots(1, 2), panels):
        for key, label in series:
            values = [_num(m.get(key)) for m in metrics]
            if any(np.isfinite(values)):
                ax.plot(rounds, values, marker="o", label=label)
        ax.set(xlabel="round", ylabel=ylabel, title=f"{ylabel.split(' ')[0]} per round")
        if ax.lines:
            ax.legend(fontsize="small")
    return _save(fig, out / "accuracy.png")
