"""Figures drawn from the tidy tables, returned (not saved) for notebooks: ``fedbarrier.load_run(...).plot``.

``fedbarrier.plots`` draws the run's PNG files from its records; these draw the same families from
the tables of :mod:`fedbarrier.outputs.tables`, so a notebook can filter first and draw after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from fedbarrier.errors import UserError
from fedbarrier.plots.drawing import DIVERGING, _heat_size, _heatmap, _symmetric_norm
from fedbarrier.plots.records import barrier_unit

if TYPE_CHECKING:
    import pandas as pd


def accuracy(metrics: pd.DataFrame, title: str = "") -> Figure:
    """Global and personalized (local) test accuracy over rounds, with the clients' min and max."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for key, label in (("global_test_accuracy", "global model, global test set"),
                       ("local_test_accuracy", "personalized, clients' local tests")):
        if key in metrics and metrics[key].notna().any():
            rows = metrics[metrics[key].notna()]
            line, = ax.plot(rows["round"], rows[key], marker="o", markersize=3, label=label)
            if f"{key}_min" in rows:
                ax.fill_between(rows["round"], rows[f"{key}_min"], rows[f"{key}_max"], alpha=0.15,
                                color=line.get_color())
    ax.set(xlabel="round", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def barriers(table: pd.DataFrame, family: str, *, split: str, metric: str, title: str = "") -> Figure:
    """``full``: the full barrier over rounds with ±1 se; else a heatmap of the family's mean."""
    rows = table[(table["split"] == split) & (table["metric"] == metric) & (table["family"] == family)
                 & (table["stat"].isin(["mean", "value"]))]
    if rows.empty:
        have = sorted(set(zip(table["split"], table["metric"], table["family"])))
        raise UserError(f"no {family} {metric} barriers on split {split!r} in this run; it has "
                        + (", ".join(f"{s}/{m}/{f}" for s, m, f in have) or "none"))
    fig = Figure(layout="constrained")
    unit = barrier_unit(metric)
    if family == "full":
        rows = rows[rows["stat"] == "mean"] if (rows["stat"] == "mean").any() else rows
        fig.set_size_inches(6, 3.6)
        ax = fig.subplots()
        ax.errorbar(rows["round"], rows["value"], yerr=rows["se"].fillna(0), marker="o", markersize=3,
                    capsize=2)
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set(xlabel="round", ylabel=unit, title=f"{title} full barrier, {split}".strip())
        ax.grid(alpha=0.3)
        return fig
    rows = rows[rows["stat"] == "mean"]
    grid_frame = rows.pivot_table(index="layer_set", columns="round", values="value", sort=False)
    order = rows.drop_duplicates("layer_set").sort_values(["k"], kind="stable")["layer_set"]
    grid_frame = grid_frame.loc[list(order)] if family != "per_layer" else grid_frame
    labels = [_short(name) for name in grid_frame.index]
    grid = grid_frame.to_numpy(dtype=float)
    fig.set_size_inches(*_heat_size(len(labels), grid.shape[1], max(len(x) for x in labels)))
    ax = fig.subplots()
    image = _heatmap(ax, grid, labels, list(grid_frame.columns), norm=_symmetric_norm(grid),
                     cmap=DIVERGING, fmt=".2f")
    fig.colorbar(image, ax=ax, label=unit)
    ax.set(xlabel="round", ylabel="layers averaged",
           title=f"{title} {family.replace('_', '-')} barrier, {split}, mean over clients".strip())
    return fig


def _short(layer_set: str) -> str:
    """A cumulative set's label: its size and the layer that joined last."""
    names = layer_set.split("+")
    return layer_set if len(names) == 1 else f"{len(names)}: +{names[-1]}"
