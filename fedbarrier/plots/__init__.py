"""Figures for fedbarrier runs, drawn on ``matplotlib.figure.Figure`` (no pyplot state).

``plot_run`` is imported on first use: it reads run records through ``fedbarrier.runtime.rundir``, which
imports torch, and ``fedbarrier.plots.partitions`` should stay importable without that cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedbarrier.plots.run import plot_run

__all__ = ["plot_run"]


def __getattr__(name: str) -> Any:
    """Resolve ``plot_run`` lazily (PEP 562)."""
    if name == "plot_run":
        from fedbarrier.plots.run import plot_run

        return plot_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
