"""Drawing primitives of every fedbarrier figure: annotated heatmaps, colour scales, sizes, saving PNGs.

They take plain arrays and ``matplotlib.figure.Figure`` objects (no pyplot registry, so they work
headless and from worker threads) and know nothing about run records, so the run, comparison and
analysis figures share them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

DPI = 120
ANNOTATE_MAX = 25  # annotate heatmap cells only when both dimensions are at most this
MAX_XTICKS = 25
DIVERGING = "RdBu_r"  # red = positive barrier (averaging hurts), blue = negative


def _save(fig: Figure, path: Path) -> Path:
    """Save as PNG, then drop the artists (there is no pyplot registry to close the figure from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()
    return path


def _symmetric_norm(*grids: np.ndarray) -> Normalize:
    """Limits symmetric about 0 so white means 'no barrier' whatever the sign of the values."""
    finite = np.concatenate([g[np.isfinite(g)] for g in grids])
    limit = float(np.abs(finite).max()) if finite.size else 0.0
    limit = limit if limit > 0 else 1.0
    return Normalize(-limit, limit)


def _heat_size(n_rows: int, n_cols: int, label_chars: int, panels: int = 1) -> tuple[float, float]:
    """Figure size that keeps row labels and annotated cells readable (21 ResNet18 layers included)."""
    cell = 0.55 if n_cols <= ANNOTATE_MAX else max(0.08, 12.0 / n_cols)
    width = panels * (0.6 + 0.075 * label_chars + n_cols * cell) + 1.4
    return min(width, 22.0), 2.0 + 0.32 * n_rows


def _heatmap(ax: Axes, grid: np.ndarray, rows: Sequence[str], cols: Sequence[Any], *, norm: Normalize,
             cmap: str, fmt: str, marks: np.ndarray | None = None) -> AxesImage:
    """Draw ``grid`` (rows top to bottom) with labelled ticks, grey NaN cells and small-grid annotations.

    ``marks``, a boolean array shaped like ``grid``, appends "*" to the annotation of the cells it
    flags (e.g. values significantly above zero).
    """
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=colormap, norm=norm,
                      interpolation="nearest")
    ax.set_yticks(range(len(rows)), labels=rows, fontsize="small")
    step = max(1, math.ceil(len(cols) / MAX_XTICKS))
    ax.set_xticks(range(0, len(cols), step), labels=[str(c) for c in cols[::step]], fontsize="small")
    if grid.shape[0] <= ANNOTATE_MAX and grid.shape[1] <= ANNOTATE_MAX:
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                r, g, b, _ = colormap(norm(value))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                star = "*" if marks is not None and marks[i, j] else ""
                ax.text(j, i, format(value, fmt) + star, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    return image
