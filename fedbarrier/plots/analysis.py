"""Figures of ``fedbarrier analyze``: robustness bars, noise-vs-σ curves, the deep linear example.

Each function takes the JSON record its command wrote (so a figure can be redrawn from the file)
and draws on ``matplotlib.figure.Figure`` (no pyplot registry), like :mod:`fedbarrier.plots.run`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedbarrier.plots.run import _save

Record = Mapping[str, Any]
KIND_STYLE = {  # noise kind -> (label, colour)
    "training": ("training subspace", "C0"),
    "null": ("null space (orthogonal complement)", "C3"),
    "interpolation": ("interpolation direction", "C2"),
}


def _increase(metric: str) -> str:
    return {"loss": "loss increase over A", "error": "error increase over A (pp)"}.get(
        metric, f"{metric} increase over A")


def _arr(values: Any) -> np.ndarray:
    """Floats with null (how NaN is written) as NaN."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def _who(record: Record) -> str:
    a, b = record["clients"]
    return (f"client {a} (A) vs client {b} (B), round {record['round']}, {record['split']} split, "
            f"n = {record['n']}")


# ---------------------------------------------------------------------------------------- robustness
def plot_robustness(record: Record, metric: str, path: Path) -> Path:
    """Bars per layer: A with the layer moved halfway to B, and halfway to a random point at the
    same distance d_l (mean ± std over draws)."""
    layers = list(record["layers"])
    interp = _arr([record["interpolation"][metric][layer] for layer in layers])
    mean = _arr([record["random"][metric][layer]["mean"] for layer in layers])
    std = _arr([record["random"][metric][layer]["std"] for layer in layers])
    x = np.arange(len(layers))
    fig = Figure(figsize=(max(7.5, 1.0 + 0.62 * len(layers)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x - 0.2, interp, width=0.4, color="C2", label="halfway to B (interpolation)")
    ax.bar(x + 0.2, mean, width=0.4, yerr=std, capsize=3, color="C7",
           label=f"halfway to a random point at distance d_l\n(mean ± std over {record['draws']} draws)")
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    many = len(layers) > 8
    labels = [f"{layer}{' ' if many else chr(10)}(d_l = {record['distance'][layer]:.3g})" for layer in layers]
    ax.set_xticks(x, labels=labels, fontsize="small", rotation=60 if many else 0,
                  ha="right" if many else "center")
    ax.set(xlabel="layer moved (input on the left); d_l = ||w_A - w_B|| of the layer",
           ylabel=_increase(metric))
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    base = f"{record['base'][metric]:.4g}" + (" %" if metric == "error" else "")
    ax.set_title(f"robustness per layer ({metric}): one layer of A moved by d_l/2, to B or at random\n"
                 f"{_who(record)}, {metric}(A) = {base}", fontsize="medium")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ subspace
def _sigma_label(record: Record) -> str:
    return ("noise norm σ (multiple of ||θ_A − θ_B|| of the scope)" if record["scale"] == "distance"
            else "noise norm σ")


def _draw_curves(ax: Axes, record: Record, scope: str, metric: str) -> None:
    """Mean ± std over draws per noise kind; the interpolation direction as its two sides."""
    sigmas = np.asarray(record["sigmas"], dtype=float)
    curves = record["curves"][scope]
    for kind in ("training", "null"):
        label, colour = KIND_STYLE[kind]
        mean, std = _arr(curves[kind][metric]["mean"]), _arr(curves[kind][metric]["std"])
        ax.plot(sigmas, mean, marker="o", markersize=3, color=colour, label=label)
        ax.fill_between(sigmas, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    label, colour = KIND_STYLE["interpolation"]
    values = np.array([_arr(row) for row in curves["interpolation"][metric]["values"]])
    ax.plot(sigmas, values[:, 1], marker="o", markersize=3, color=colour, label=f"{label}, towards B")
    ax.plot(sigmas, values[:, 0], marker="o", markersize=3, color=colour, linestyle="--",
            label=f"{label}, away from B")
    if record["scale"] == "distance" and len(sigmas) and sigmas.min() <= 0.5 <= sigmas.max():
        ax.axvline(0.5, color="0.6", linewidth=0.8, linestyle=":")  # towards B at 0.5: the midpoint
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    # The kinds differ by orders of magnitude: logarithmic above a threshold, linear (so zero and
    # negative increases stay visible) below it. Error: one example of the sample; loss: 1e-3.
    ax.set_yscale("symlog", linthresh=_linthresh(record, metric), linscale=0.5)


def _linthresh(record: Record, metric: str) -> float:
    return 100.0 / record["n"] if metric == "error" and record.get("n") else 1e-3


def _symlog_label(record: Record, metric: str) -> str:
    return f"{_increase(metric)}\n(log scale above {_linthresh(record, metric):.3g})"


def plot_subspace(record: Record, metric: str, path: Path) -> Path:
    """The whole model: increase of A's metric against the noise norm σ, one line per subspace."""
    info = record["info"]["model"]
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    _draw_curves(ax, record, "model", metric)
    ax.set(xlabel=_sigma_label(record), ylabel=_symlog_label(record, metric))
    ax.legend(fontsize="small", loc="best")
    ax.set_title(f"noise of norm σ on the whole model of A, {metric}\n{_who(record)}\n"
                 f"dim {info['dim']}, training subspace dim {info['subspace_dim']}, "
                 f"||θ_A − θ_B|| = {info['distance']:.3g}; bands: ± std over {record['draws']} draws",
                 fontsize="medium")
    return _save(fig, path)


def plot_subspace_layers(record: Record, metric: str, path: Path) -> Path:
    """One panel per layer: noise restricted to that layer's coordinates (own y scale each)."""
    layers = [s for s in record["scopes"] if s != "model"]
    cols = min(4, max(1, len(layers)))
    rows = max(1, math.ceil(len(layers) / cols))
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows + 1.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        info = record["info"][layer]
        _draw_curves(ax, record, layer, metric)
        ax.set_title(f"{layer} (dim {info['dim']}, subspace {info['subspace_dim']})", fontsize="small")
        ax.tick_params(labelsize="small")
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("σ / ||θ_A − θ_B||" if record["scale"] == "distance" else "σ", fontsize="small")
    for ax in axes[:, 0]:
        ax.set_ylabel(_symlog_label(record, metric), fontsize="small")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"noise of norm σ on one layer of A at a time, {metric}\n{_who(record)}",
                 fontsize="medium")
    return _save(fig, path)


# --------------------------------------------------------------------------------------- deep linear
def plot_deep_linear(record: Record, path: Path) -> Path:
    """The landscape in (w1, w2) with the three paths; the loss along the full path (a bump); the
    loss along the two single-layer cuts (convex). Values at α = ½ are marked."""
    styles = {"full": ("full path (both layers)", "C3"), "layer1": ("layer 1 cut (w2 kept from A)", "C0"),
              "layer2": ("layer 2 cut (w1 kept from A)", "C2")}
    fig = Figure(figsize=(15.0, 4.8), layout="constrained")
    land, full, cuts = fig.subplots(1, 3)
    w = np.linspace(0.0, 2.5, 201)
    w1, w2 = np.meshgrid(w, w)
    loss = (w2 * w1 * record["x"] - record["y"]) ** 2
    contour = land.contourf(w1, w2, np.log10(loss + 1e-3), levels=20, cmap="Greys")
    fig.colorbar(contour, ax=land, label="log10(loss + 0.001)")
    for name, (label, colour) in styles.items():
        pts = np.asarray(record["points"][name])
        land.plot(pts[:, 0], pts[:, 1], color=colour, linewidth=2, label=label)
    for name, (w1_, w2_) in (("A", record["A"]), ("B", record["B"])):
        land.plot(w1_, w2_, "ko")
        land.annotate(name, (w1_, w2_), textcoords="offset points", xytext=(6, 6), fontweight="bold")
    land.set(xlabel="w1", ylabel="w2", xlim=(0, 2.5), ylim=(0, 2.5), aspect="equal",
             title="loss (w2·w1·x − y)²: zero on w1·w2 = 1")
    land.legend(fontsize="small", loc="upper right")
    alphas = np.asarray(record["alphas"])
    for ax, names in ((full, ["full"]), (cuts, ["layer1", "layer2"])):
        for name in names:
            label, colour = styles[name]
            values = np.asarray(record["paths"][name])
            ax.plot(alphas, values, color=colour, marker=".", label=label)
            at = np.isclose(alphas, 0.5)
            if at.any():
                mid = float(values[at][0])
                ax.plot(0.5, mid, "o", color=colour, markersize=8, markerfacecolor="none")
                ax.annotate(f"{mid:.8g} at α = ½", (0.5, mid), textcoords="offset points",
                            xytext=(-10, 14) if name == "layer2" else (10, 8),
                            ha="right" if name == "layer2" else "left", color=colour, fontsize="small")
        ax.set(xlabel="α (0 = A, 1 = B)", ylabel="squared loss")
        ax.set_ylim(top=1.15 * max(max(record["paths"][name]) for name in names))
        ax.legend(fontsize="small", loc="upper left")
    full.set_title("full path: a bump although both ends have loss 0", fontsize="medium")
    cuts.set_title("single-layer cuts (default A): convex in α", fontsize="medium")
    fig.suptitle("deep linear network f(x) = w2·w1·x, one example x = 1, y = 1: A = (2, ½), B = (½, 2)",
                 fontsize="medium")
    return _save(fig, path)
