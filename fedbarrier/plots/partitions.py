"""Stacked bar chart of how many training examples of each class every client holds.

Uses ``matplotlib.figure.Figure`` directly instead of pyplot: no global figure registry, no
backend selection, so it is safe from worker threads and headless machines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from partitions.stats import PartitionStats

DPI = 120
_LEGEND_ROWS = 25


def plot_partition_counts(stats: PartitionStats, path: Path, title: str = "") -> Path:
    """Draw per-client training examples stacked by class and save it as a PNG at ``path``.

    Returns
    -------
    Path
        The written file (parent folders are created).
    """
    counts = stats.train_counts
    num_clients, num_classes = counts.shape
    fig = Figure(figsize=(max(6.0, 3.0 + 0.3 * num_clients), 4.5), layout="constrained")
    ax = fig.add_subplot()
    clients = np.arange(num_clients)
    bottoms = np.concatenate([np.zeros((num_clients, 1)), np.cumsum(counts, axis=1)], axis=1)
    for cls, color in enumerate(class_colors(num_classes)):
        ax.bar(clients, counts[:, cls], bottom=bottoms[:, cls], color=color, label=str(cls))
    ax.set_xlabel("client")
    ax.set_ylabel("training examples")
    if num_clients <= 40:
        ax.set_xticks(clients)
    if title:
        ax.set_title(title)
    fig.legend(
        title="class",
        loc="outside right upper",
        ncols=math.ceil(num_classes / _LEGEND_ROWS) or 1,
        fontsize="small",
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    fig.clear()  # no pyplot registry to close it from; drop the artists now
    return out


def class_colors(num_classes: int) -> list[tuple[float, float, float, float]]:
    """Pick one RGBA color per class: qualitative tab10/tab20, or evenly spaced turbo beyond 20."""
    if num_classes <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(num_classes)]
    if num_classes <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(num_classes)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(x) for x in np.linspace(0.0, 1.0, num_classes)]
