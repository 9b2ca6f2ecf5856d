"""fedbarrier from Python (notebooks): run an experiment, load a run or a comparison as pandas tables.

    import fedbarrier
    run = fedbarrier.load_run("runs/quickstart")
    run.metrics                      # one row per round
    run.barriers                     # tidy: one row per recorded barrier number
    run.barriers.query("split == 'test' and family == 'per_layer' and stat == 'mean'")
    run.plot("per_layer", split="test", metric="error")   # a matplotlib Figure

The tables' columns are documented in :mod:`fedbarrier.outputs.tables`; the records they come
from in docs/records.md. Tables are read once and cached; a run still going is re-read by
calling :func:`load_run` again.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbarrier.config import Config, load_config
from fedbarrier.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from fedbarrier.runtime.rundir import RunDir

PLOTS = ("accuracy", "full", "per_layer", "shallow", "deep")
FORMATS = ("csv", "parquet")


@dataclass
class Run:
    """One run directory, read lazily: ``config``, ``metrics``, ``barriers``, ``distances``."""

    path: Path

    @cached_property
    def config(self) -> Config:
        return load_config(self.path / "config.toml")

    @cached_property
    def metrics(self) -> pd.DataFrame:
        from fedbarrier.outputs.tables import metrics_table

        return metrics_table(self._run_dir.metrics())

    @cached_property
    def barriers(self) -> pd.DataFrame:
        from fedbarrier.outputs.tables import barrier_table

        return barrier_table(self._barrier_records)

    @cached_property
    def distances(self) -> pd.DataFrame:
        from fedbarrier.outputs.tables import distance_table

        return distance_table(self._barrier_records)

    @cached_property
    def _barrier_records(self) -> list[dict[str, Any]]:
        """barriers.jsonl, read once for both tables that come from it."""
        return list(self._run_dir.barriers())

    @property
    def _run_dir(self) -> RunDir:
        from fedbarrier.runtime.rundir import RunDir

        return RunDir(self.path)

    def plot(self, kind: str = "per_layer", *, split: str = "test", metric: str = "loss") -> Figure:
        """A figure of this run: ``accuracy`` over rounds, the ``full`` barrier over rounds (± se),
        or a heatmap (layer set x round) of the ``per_layer``, ``shallow`` or ``deep`` barrier's
        mean over default clients (local splits: over clients)."""
        from fedbarrier.outputs import figures

        if kind not in PLOTS:
            raise UserError(f"plot kind {kind!r} is not one of {', '.join(PLOTS)}")
        if kind == "accuracy":
            return figures.accuracy(self.metrics, title=self.path.name)
        return figures.barriers(self.barriers, kind, split=split, metric=metric, title=self.path.name)

    def export(self, out: str | Path | None = None, *, fmt: str = "csv") -> list[Path]:
        """Write ``metrics``, ``barriers`` and ``distances`` as CSV or Parquet files into ``out``
        (default ``RUN_DIR/tables``); returns the files."""
        if fmt not in FORMATS:
            raise UserError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise UserError("--format parquet needs pyarrow: pip install pyarrow "
                                "(or use --format csv)") from None
        from fedbarrier.runtime.rundir import write_atomic

        folder = Path(out) if out is not None else self.path / "tables"
        written = []
        for name in ("metrics", "barriers", "distances"):
            table = getattr(self, name)
            if name == "metrics":  # lists and maps (clients, excluded_clients) as JSON text
                table = table.apply(lambda col: col.map(_json_cell) if col.dtype == object else col)
            path = folder / f"{name}.{fmt}"
            if fmt == "csv":
                write_atomic(path, table.to_csv(index=False))
            else:
                buffer = io.BytesIO()
                table.to_parquet(buffer, index=False)
                write_atomic(path, buffer.getvalue())
            written.append(path)
        return written


def _json_cell(value: Any) -> Any:
    import json

    return json.dumps(value) if isinstance(value, (dict, list)) else value


def load_run(path: str | Path) -> Run:
    """A run directory (``fedbarrier run``, ``flwr run``, or one run of a comparison)."""
    run = Run(Path(path))
    if not (run.path / "metrics.jsonl").is_file():
        raise UserError(f"{str(path)!r} is not a run directory (no metrics.jsonl)")
    return run


def run(config: str | Path | Config, overrides: Sequence[str] = (), *, out: str | Path | None = None,
        force: bool = False, progress: bool = True) -> Run:
    """Run an experiment (a TOML file or a :class:`Config`, plus ``--set``-style overrides) and
    return it loaded. ``out`` defaults to ``runs/<experiment name>``, as ``fedbarrier run``."""
    from fedbarrier.config import from_dict, to_dict
    from fedbarrier.fl.simulation import run_experiment

    cfg = (from_dict(to_dict(config), overrides) if isinstance(config, Config)
           else load_config(config, overrides))
    folder = Path(out) if out is not None else Path("runs") / (cfg.name or "run")
    run_experiment(cfg, folder, force=force, progress=progress)
    return load_run(folder)


@dataclass
class Comparison:
    """A ``fedbarrier compare`` folder: its summary table and every run, with its labels."""

    path: Path
    runs: dict[str, list[Run]] = field(default_factory=dict)
    grid: dict[str, dict[str, str]] | None = None

    @cached_property
    def summary(self) -> pd.DataFrame:
        """summary.csv: one row per run (grid values, strategy, seed, finished, the numbers)."""
        import pandas as pd

        path = self.path / "summary.csv"
        if not path.is_file():
            raise UserError(f"{str(self.path)!r} has no summary.csv yet: run "
                            f"python -m fedbarrier.compare {self.path}")
        keys = {key for values in (self.grid or {}).values() for key in values}
        return pd.read_csv(path, dtype={key: str for key in keys | {"strategy", "seed"}})

    def _labelled(self, name: str) -> pd.DataFrame:
        import pandas as pd

        frames = []
        for group, runs in self.runs.items():
            strategy = group.rpartition("/")[2] if self.grid else group
            for run in runs:
                frame = getattr(run, name).copy()
                frame.insert(0, "seed", run.path.name.removeprefix("seed-"))
                frame.insert(0, "strategy", strategy)
                for i, (key, value) in enumerate((self.grid or {}).get(group, {}).items()):
                    frame.insert(i, key, value)
                frames.append(frame.reset_index(drop=True))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Every run's metrics, with grid, strategy and seed columns first."""
        return self._labelled("metrics")

    @cached_property
    def barriers(self) -> pd.DataFrame:
        """Every run's tidy barrier table, with grid, strategy and seed columns first."""
        return self._labelled("barriers")


def load_comparison(path: str | Path) -> Comparison:
    """A comparison folder (``fedbarrier compare --out``), sweeps included."""
    from fedbarrier.compare import find_groups

    folder = Path(path)
    groups, grid = find_groups(folder)
    if not groups:
        raise UserError(f"{str(path)!r} holds no runs: expected OUT/<strategy>/seed-<n>/metrics.jsonl")
    return Comparison(folder, {g: [Run(p) for p in paths] for g, paths in groups.items()}, grid)
