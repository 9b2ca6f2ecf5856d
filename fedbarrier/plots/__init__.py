"""Figures for fedbarrier runs, drawn on ``matplotlib.figure.Figure`` (no pyplot state)."""
