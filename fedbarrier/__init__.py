"""fedbarrier: federated-learning simulation with layer-wise barrier instrumentation.

From Python (notebooks)::

    import fedbarrier
    run = fedbarrier.run("experiments/quickstart.toml", ["train.rounds=2"], out="runs/nb")
    run = fedbarrier.load_run("runs/quickstart")      # run.config, run.metrics, run.barriers
    cmp = fedbarrier.load_comparison("runs/quickstart-compare")

See :mod:`fedbarrier.api`. The names are resolved on first use, so ``import fedbarrier`` stays
cheap (no torch, pandas or Flower).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["Comparison", "Run", "load_comparison", "load_run", "run", "__version__"]


def __getattr__(name: str) -> Any:
    """Resolve the API lazily (PEP 562)."""
    if name in ("Comparison", "Run", "load_comparison", "load_run", "run"):
        # By name, not an import statement: every module imports this package, and type checkers
        # follow import statements (even in functions) into the API's Flower and pandas layers.
        return getattr(importlib.import_module("fedbarrier.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
