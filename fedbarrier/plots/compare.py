"""Comparison plots: accuracy per strategy over rounds, per-layer barriers side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fedbarrier.plots.records import layer_order
from fedbarrier.plots.run import DIVERGING, _grid, _heatmap, _save, _symmetric_norm
from fedbarrier.runtime.rundir import read_jsonl


def _mean_curve(paths: list[Path], key: str) -> tuple[list[int], np.ndarray] | None:
    curves = []
    for p in paths:
        rows = [m for m in read_jsonl(p / "metrics.jsonl") if isinstance(m.get(key), (int, float))]
        curves.append({m["round"]: float(m[key]) for m in rows})
    rounds = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not rounds:
        return None
    return rounds, np.array([[c[r] for r in rounds] for c in curves])


def plot_comparison(runs: dict[str, list[Path]], out: Path, title: str = "") -> list[Path]:
    """accuracy.png and per_layer_barriers.png of one comparison (``title``: its grid point)."""
    written = []
    where = f" — {title}" if title else ""
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((axes[0], "local_test_accuracy", "personalized (clients' local tests)"),
                           (axes[1], "global_test_accuracy", "global model (global test set)")):
        for strategy, paths in runs.items():
            curve = _mean_curve(paths, key)
            if curve is None:
                continue
            rounds, values = curve
            mean = values.mean(axis=0)
            line, = ax.plot(rounds, mean, marker="o", markersize=3, label=strategy)
            if len(values) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(rounds, mean - std, mean + std, alpha=0.2, color=line.get_color())
        ax.set(title=title, xlabel="round", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"accuracy per strategy (mean ± std over seeds){where}")
    written.append(_save(fig, out / "accuracy.png"))

    grids = {}
    for strategy, paths in runs.items():
        recs = [b for b in read_jsonl(paths[0] / "barriers.jsonl")
                if b.get("split") == "test" and b.get("per_layer", {}).get("loss")]
        layers = layer_order(recs[:1])  # a record without "layers": its per_layer order
        if layers:
            grids[strategy] = (layers, [r["round"] for r in recs],
                               _grid(recs, layers, lambda rec, layer: rec["per_layer"]["loss"].get(layer)))
    if grids:
        norm = _symmetric_norm(*(g for _, _, g in grids.values()))
        layers = next(iter(grids.values()))[0]
        fig = Figure(figsize=(3.2 * len(grids) + 2, 1.6 + 0.3 * len(layers)), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(grids), sharey=True))
        image = None
        for ax, (strategy, (names, rounds, grid)) in zip(axes, grids.items()):
            image = _heatmap(ax, grid, names, rounds, norm=norm, cmap=DIVERGING, fmt=".2f")
            ax.set(title=strategy, xlabel="round")
        axes[0].set_ylabel("layer averaged")
        fig.colorbar(image, ax=list(axes), label="loss barrier")
        fig.suptitle("per-layer barrier, test split, loss (first seed, mean over default clients)"
                     + where)
        written.append(_save(fig, out / "per_layer_barriers.png"))
    return written
