"""``fedbarrier compare``: strategies side by side on identical partitions and seeds.

Every (strategy, seed) pair is a normal run in ``OUT/<strategy>/seed-<seed>/``; the partition and
the initialization depend only on the data config and the seed, so all strategies of one seed see
the same clients with the same data and start from the same model. The summary compares
personalized accuracy (each client's model on its own local test part: shared layers just received
plus its personal layers) and its spread over clients, the global model's accuracy (every layer
averaged, on the global test set), communication, and barriers: server-side, and local (each client
on its own data, BARRIERS.md Version 2).

Over seeds a cell is mean ± sample std. Where a column has a within-run standard error (the
server's ``full_se``; the local mean's sqrt(sum_k p_k^2 se_k^2) over clients), the cell adds
"(se x)": the root mean square of the seeds' ses, to hold against the spread over seeds.

A run that stopped early (e.g. every client diverged: the run raises RunAborted) does not stop
the comparison: the other pairs still run, the table counts it apart ("2 (+1 stopped)") and leaves
it out of the cells, summary.csv keeps its numbers with ``finished`` = 0, and the command exits 1
at the end, naming it.

A finished comparison folder is summarized again, without running anything, by
``python -m fedbarrier.compare OUT`` (:func:`summarize_folder`).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedbarrier.config import Config, config_differences, from_dict, load_config, to_dict
from fedbarrier.errors import RunAborted, UserError
from fedbarrier.outputs.progress import live_display
from fedbarrier.plots.records import full_se, full_value
from fedbarrier.runtime.rundir import RunDir, read_jsonl, write_atomic

COLUMNS = [
    ("final personalized acc (%)", "final_local"),
    ("best personalized acc (%)", "best_local"),
    ("client spread (std)", "client_std"),
    ("worst client acc", "worst_client"),
    ("final global acc (%)", "final_global"),
    ("MB communicated", "megabytes"),
    ("full barrier, test loss", "barrier_loss"),
    ("full barrier, test error (pp)", "barrier_error"),
    ("max per-layer barrier, test loss", "max_layer_loss"),
    ("local full barrier, local-test error (pp)", "local_barrier_error"),
]
#: columns with a within-run standard error, and the key that holds it (a column of summary.csv)
SE_COLUMNS = {"barrier_loss": "barrier_loss_se", "barrier_error": "barrier_error_se",
              "local_barrier_error": "local_barrier_error_se"}
SUMMARY_MD, SUMMARY_CSV = "summary.md", "summary.csv"
PLAN_FILE = "comparison.json"
#: keys a grid must not vary, and the option that varies them
GRID_ELSEWHERE = {"seed": "--seeds", "strategy.name": "--strategies", "name": "a separate comparison"}


def run_summary(run_dir: Path) -> dict[str, float]:
    """The numbers one run contributes to the comparison (NaN where absent).

    The clients' spread is the unweighted std and min of their personalized accuracies in the
    round of ``final_local``. Barriers are those of the last measured round: server-side on the
    ``test`` split, local on ``local-test`` (the p-weighted mean over clients, each on its own
    test part); ``*_se`` their standard errors.
    """
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m.get("round", 0) > 0]
    barriers = read_jsonl(run_dir / "barriers.jsonl")
    server = [b for b in barriers if b.get("split") == "test"]
    local_test = [b for b in barriers if b.get("split") == "local-test" and isinstance(b.get("full"), dict)
                  and isinstance(b["full"].get("error"), dict)]

    def series(key: str) -> list[float]:
        return [float(m[key]) for m in metrics if _is_number(m.get(key))]

    local, glob = series("local_test_accuracy"), series("global_test_accuracy")
    nan = float("nan")
    out = {
        "final_local": local[-1] if local else nan,
        "best_local": max(local) if local else nan,
        "client_std": nan, "worst_client": nan,
        "final_global": glob[-1] if glob else nan,
        "megabytes": (sum(series("bytes_sent")) + sum(series("bytes_received"))) / 1e6,
        "barrier_loss": nan, "barrier_error": nan, "max_layer_loss": nan, "local_barrier_error": nan,
    } | {se: nan for se in SE_COLUMNS.values()}
    final = [m for m in metrics if _is_number(m.get("local_test_accuracy"))]
    if final:
        spread = {"client_std": "local_test_accuracy_std", "worst_client": "local_test_accuracy_min"}
        for key, name in spread.items():
            out[key] = float(final[-1][name]) if _is_number(final[-1].get(name)) else nan
    if server:
        last = server[-1]
        out["barrier_loss"] = last.get("full", {}).get("loss", nan)
        out["barrier_error"] = last.get("full", {}).get("error", nan)
        out["barrier_loss_se"], out["barrier_error_se"] = full_se(last, "loss"), full_se(last, "error")
        per_layer = last.get("per_layer", {}).get("loss", {})
        if per_layer:
            out["max_layer_loss"] = max(v["mean"] for v in per_layer.values())
    if local_test:
        out["local_barrier_error"] = full_value(local_test[-1], "error")
        out["local_barrier_error_se"] = full_se(local_test[-1], "error")
    return out


def run_finished(run_dir: Path) -> bool:
    """Whether the run recorded every round its config.toml asks for (True without a config: then
    nothing says it stopped)."""
    if not (run_dir / "config.toml").is_file():
        return True
    rounds = load_config(run_dir / "config.toml").train.rounds
    done = [m["round"] for m in read_jsonl(run_dir / "metrics.jsonl") if isinstance(m.get("round"), int)]
    return max(done, default=-1) >= rounds


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(values: list[float]) -> np.ndarray:
    return np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)


def _fmt(values: list[float], ses: list[float] | None = None) -> str:
    """mean ± sample std over seeds; "(se x)" adds the root mean square of the seeds' ses."""
    v = _finite(values)
    if v.size == 0:
        return "–"
    text = f"{v.mean():.3g}" if v.size == 1 else f"{v.mean():.3g} ± {v.std(ddof=1):.2g}"
    se = _finite(ses or [])
    return f"{text} (se {math.sqrt(float(np.mean(se ** 2))):.2g})" if se.size else text


def summarize(runs: dict[str, list[Path]],
              finished: dict[str, list[bool]] | None = None,
              grid: dict[str, dict[str, str]] | None = None,
              summaries: dict[str, list[dict[str, float]]] | None = None) -> tuple[str, str]:
    """(markdown table, CSV) over seeds: mean ± sample std, and the within-run se where there is one.

    Cells are over the finished runs only (``finished``: :func:`run_finished` of each run, read
    from the runs when not given); a run that stopped early is counted in "seeds" apart and keeps
    its numbers in the CSV (``finished`` = 0). In a sweep the keys of ``runs`` are
    ``<grid point>/<strategy>`` and ``grid`` gives each key's grid values: the table gains one
    column per grid key, before the strategy. ``summaries``: :func:`run_summary` of each run, when
    the caller has read them already.
    """
    rows = summaries or {s: [run_summary(p) for p in paths] for s, paths in runs.items()}
    if finished is None:
        finished = {s: [run_finished(p) for p in paths] for s, paths in runs.items()}
    grid_keys = list(next(iter(grid.values()))) if grid else []
    header = grid_keys + ["strategy", "seeds"] + [title for title, _ in COLUMNS]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = [key for _, key in COLUMNS] + list(SE_COLUMNS.values())
    writer.writerow(grid_keys + ["strategy", "seed", "finished"] + keys)
    for group, summaries in rows.items():
        values = [grid[group][k] for k in grid_keys] if grid else []
        strategy = group.rpartition("/")[2] if grid else group
        done = [s for s, ok in zip(summaries, finished[group]) if ok]
        stopped = len(summaries) - len(done)
        cells = values + [strategy, f"{len(done)} (+{stopped} stopped)" if stopped else str(len(done))]
        cells += [_fmt([s[key] for s in done],
                       [s[SE_COLUMNS[key]] for s in done] if key in SE_COLUMNS else None)
                  for _, key in COLUMNS]
        md.append("| " + " | ".join(cells) + " |")
        for path, s, ok in zip(runs[group], summaries, finished[group]):
            writer.writerow(values + [strategy, path.name.removeprefix("seed-"), int(ok)]
                            + [s[k] for k in keys])
    return "\n".join(md) + "\n", buf.getvalue()


def _write_summary(runs: dict[str, list[Path]], out: Path,
                   grid: dict[str, dict[str, str]] | None = None) -> str:
    """Write summary.md, summary.csv and the comparison plots into ``out`` (in a sweep, also each
    grid point's own table and plots into its folder); returns the markdown."""
    from fedbarrier.plots.compare import plot_comparison

    finished = {s: [run_finished(p) for p in paths] for s, paths in runs.items()}
    summaries = {s: [run_summary(p) for p in paths] for s, paths in runs.items()}  # read once
    markdown, table = summarize(runs, finished, grid, summaries)
    RunDir(out).write_text(SUMMARY_MD, markdown)
    write_atomic(out / SUMMARY_CSV, table)
    points: dict[str, list[str]] = {}
    for group in runs:
        points.setdefault(group.rpartition("/")[0] if grid else "", []).append(group)
    for point, groups in points.items():
        # the curves of the finished runs, as the table; a strategy with none shows where it stopped
        curves = {}
        for group in groups:
            strategy = group.rpartition("/")[2] if grid else group
            done = [p for p, ok in zip(runs[group], finished[group]) if ok]
            curves[strategy if done else f"{strategy} (stopped)"] = done or runs[group]
        if point:
            def by_strategy(values: dict[str, Any], groups: list[str] = groups) -> dict[str, Any]:
                return {g.rpartition("/")[2]: values[g] for g in groups}

            point_md, point_csv = summarize(by_strategy(runs), by_strategy(finished),
                                            summaries=by_strategy(summaries))
            RunDir(out / point).write_text(SUMMARY_MD, f"{point}\n\n{point_md}")
            write_atomic(out / point / SUMMARY_CSV, point_csv)
        plot_comparison(curves, out / point if point else out, title=point)
    return markdown


def run_folder_name(strategy: str) -> str:
    """The folder of a strategy's runs inside a comparison folder (plug-in names hold ':' or '/')."""
    return strategy.replace(":", "-").replace("/", "-")


def find_runs(out: Path) -> dict[str, list[Path]]:
    """The runs of a comparison folder, ``OUT/<strategy>/seed-<n>/`` (with a metrics.jsonl).

    Strategy names and the order of strategies and seeds come from the folder's summary.csv when
    it has one (so a re-summary reproduces the table); otherwise, and for runs it does not list,
    folder names in alphabetical order and seeds in numeric order.
    """
    found: dict[str, list[Path]] = {}
    for folder in (sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []):
        seeds = [p for p in folder.glob("seed-*") if p.is_dir() and (p / "metrics.jsonl").exists()]
        if seeds:
            found[folder.name] = sorted(seeds, key=lambda p: _seed_key(p.name.removeprefix("seed-")))
    listed: dict[str, list[Path]] = {}
    if (out / SUMMARY_CSV).exists():
        for row in csv.DictReader(io.StringIO((out / SUMMARY_CSV).read_text())):
            strategy, seed = row.get("strategy") or "", row.get("seed") or ""
            run = out / run_folder_name(strategy) / f"seed-{seed}"
            if strategy and run in found.get(run_folder_name(strategy), []):
                listed.setdefault(strategy, []).append(run)
    runs: dict[str, list[Path]] = {}
    for strategy, paths in listed.items():
        rest = [p for p in found.pop(run_folder_name(strategy), []) if p not in paths]
        runs[strategy] = paths + rest
    return runs | found


def _seed_key(seed: str) -> tuple[int, int, str]:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def read_plan(out: Path) -> dict[str, Any]:
    """The comparison's plan (``comparison.json``: strategies, seeds, grid); {} when absent."""
    try:
        plan = json.loads((Path(out) / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return plan if isinstance(plan, dict) else {}


def find_groups(out: Path) -> tuple[dict[str, list[Path]], dict[str, dict[str, str]] | None]:
    """The runs of a comparison folder and, for a sweep, each group's grid values.

    Without a grid (or an older folder without ``comparison.json``) the keys are strategies, as
    :func:`find_runs`; in a sweep they are ``<grid point>/<strategy>``.
    """
    out = Path(out)
    grid = read_plan(out).get("grid") or {}
    if not grid:
        return find_runs(out), None
    runs: dict[str, list[Path]] = {}
    values: dict[str, dict[str, str]] = {}
    for point in grid_points(grid):
        for strategy, paths in find_runs(out / point.label).items():
            runs[f"{point.label}/{strategy}"] = paths
            values[f"{point.label}/{strategy}"] = point.values
    return runs, values


def summarize_folder(out: Path) -> dict[str, list[Path]]:
    """Rebuild summary.md, summary.csv and the comparison plots of an existing comparison folder.

    Nothing is run: the table is recomputed from the runs' records (e.g. after records gained
    standard errors, or after the table gained columns). Returns the runs, as :func:`compare`.
    """
    out = Path(out)
    runs, grid = find_groups(out)
    if not runs:
        raise UserError(f"{str(out)!r} holds no runs: expected OUT/<strategy>/seed-<n>/metrics.jsonl")
    _write_summary(runs, out, grid)
    return runs


# ---------------------------------------------------------------------------------------------
# Sweeps: --grid key=v1,v2
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridPoint:
    """One combination of grid values: ``values`` = {config key: value as given}."""

    values: dict[str, str]

    @property
    def label(self) -> str:
        """Its folder inside the comparison, e.g. ``data.alpha=0.1+train.local_epochs=5``."""
        return "+".join(f"{key}={value}" for key, value in self.values.items())

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values.items()]


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["data.alpha=0.1,0.5", "train.local_epochs=1,5"]`` -> {key: [values]}, checked for form.

    Values are split on commas outside brackets (``barriers.splits=["test"],["train","test"]``).
    Whether each value is valid for its key is checked by :func:`plan_configs`.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UserError(f"--grid {spec!r} must look like section.key=value1,value2")
        if key in GRID_ELSEWHERE:
            raise UserError(f"--grid {key}: vary it with {GRID_ELSEWHERE[key]}, not --grid")
        if key in grid:
            raise UserError(f"--grid {key} is given twice; list all its values once")
        values = _split_top_level(text)
        if any(not v for v in values) or any(c in v for v in values for c in "/\\\0"):
            raise UserError(f"--grid {spec!r}: values must be non-empty and hold no '/' or '\\'")
        if len(set(values)) != len(values):
            raise UserError(f"--grid {spec!r} repeats a value")
        grid[key] = values
    return grid


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()]


def grid_points(grid: dict[str, list[str]]) -> list[GridPoint]:
    """Every combination, the first key varying slowest; one empty point without a grid."""
    return [GridPoint(dict(zip(grid, combo))) for combo in itertools.product(*grid.values())]


@dataclass(frozen=True)
class PlannedRun:
    group: str          # the summary row: strategy, or <grid point>/<strategy> in a sweep
    strategy: str
    seed: int
    point: GridPoint
    config: Config
    path: Path


def plan_configs(cfg: Config, strategies: Sequence[str], seeds: Sequence[int],
                 grid: dict[str, list[str]], out: Path) -> list[PlannedRun]:
    """Every run of the comparison with its validated config, seed by seed (so that an
    interrupted sweep has finished whole seeds first). Raises UserError for a bad grid value."""
    from fedbarrier.fl.simulation import preflight

    if not strategies:
        raise UserError("--strategies needs at least one strategy name")
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    base = to_dict(cfg)
    points: list[tuple[GridPoint, Config]] = []
    for point in grid_points(grid):
        try:
            point_cfg = from_dict(base, point.overrides)
        except UserError as exc:
            raise UserError(f"--grid {point.label}: {exc}") from None
        points.append((point, point_cfg))
    configs: dict[tuple[str, str], Config] = {}
    for point, point_cfg in points:
        for name in strategies:  # validate every strategy at every point before running any
            configs[point.label, name] = replace(point_cfg, strategy=replace(point_cfg.strategy, name=name),
                                                 output=replace(point_cfg.output, plots=False))
            try:
                preflight(configs[point.label, name])
            except UserError as exc:
                raise UserError(f"{point.label}: {exc}" if point.label else str(exc)) from None
    planned = []
    for seed in seeds:
        for point, _ in points:
            for name in strategies:
                folder = out / point.label if point.label else out
                planned.append(PlannedRun(
                    group=f"{point.label}/{name}" if point.label else name, strategy=name, seed=seed,
                    point=point, config=replace(configs[point.label, name], seed=seed),
                    path=folder / run_folder_name(name) / f"seed-{seed}"))
    return planned


def _check_reusable(run: PlannedRun) -> None:
    """A run folder a rerun would continue must hold the same experiment."""
    if not (run.path / "config.toml").is_file():
        return
    differs = config_differences(load_config(run.path / "config.toml"), run.config)
    if differs:
        raise UserError(f"{str(run.path)!r} holds a run with a different config (differs in "
                        f"{', '.join(differs)}); pass --force to start the "
                        "comparison again or choose another --out")


def _run_or_reuse(run: PlannedRun, number: str, *, force: bool, progress: bool) -> str | None:
    """Run, resume or reuse one planned run; a description if it stopped early, else None."""
    from fedbarrier.fl.simulation import resume_experiment, run_experiment

    where = f"{run.strategy} seed {run.seed}" + (f" at {run.point.label}" if run.point.label else "")
    if not force and run_finished(run.path) and (run.path / "metrics.jsonl").is_file():
        if progress:
            print(f"== {number} {where}: finished earlier, reused", flush=True)
        return None
    if progress:
        print(f"== {number} {where} -> {run.path}", flush=True)
    try:
        if not force and (run.path / "config.toml").is_file():
            resume_experiment(run.path, run.config, progress=progress)
        else:
            run_experiment(run.config, run.path, force=True, progress=progress)
    except RunAborted as exc:  # a result (e.g. divergence), not a reason to stop the rest
        print(f"== {where} stopped early: {exc}", file=sys.stderr, flush=True)
        return f"{where} ({exc})"
    return None


def compare(cfg: Config, strategies: Sequence[str], seeds: Sequence[int], out: Path, *,
            force: bool = False, progress: bool = True,
            grid: dict[str, list[str]] | None = None) -> dict[str, list[Path]]:
    """Run every strategy for every seed (and grid point), then write the table and the plots.

    Run again on the same folder, it continues: finished runs are reused as they are, an
    interrupted one is resumed, missing ones run (``force``: every run starts again). Returns
    the runs by summary row: strategy, or ``<grid point>/<strategy>`` in a sweep.
    """
    grid = grid or {}
    planned = plan_configs(cfg, strategies, seeds, grid, out)
    if not force:
        for run in planned:
            _check_reusable(run)
    write_atomic(out / PLAN_FILE, json.dumps(
        {"strategies": list(strategies), "seeds": list(seeds), "grid": grid}, indent=2))
    runs: dict[str, list[Path]] = {}
    values: dict[str, dict[str, str]] = {}
    stopped: list[str] = []
    with live_display() if progress else nullcontext() as display:
        task = display.add("runs", total=len(planned)) if display is not None else None
        for number, run in enumerate(planned, 1):
            runs.setdefault(run.group, []).append(run.path)
            values[run.group] = run.point.values
            if display is not None:
                display.update(task, completed=number - 1, description=f"run {number}/{len(planned)}")
            stop = _run_or_reuse(run, f"[{number}/{len(planned)}]", force=force, progress=progress)
            if stop:
                stopped.append(stop)
        if display is not None:
            display.update(task, completed=len(planned))
    print(_write_summary(runs, out, values if grid else None))
    if stopped:
        raise RunAborted(f"{len(stopped)} of {len(planned)} runs stopped early: "
                         f"{'; '.join(stopped)}; the table counts them apart")
    return runs


def parse_list(text: str, kind: type = str) -> list[Any]:
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{text!r} must be a comma-separated list of {kind.__name__}s") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedbarrier.compare OUT``: re-summarize a finished comparison folder."""
    parser = argparse.ArgumentParser(
        prog="python -m fedbarrier.compare",
        description="Rebuild summary.md, summary.csv and the comparison plots of a comparison folder "
                    "(OUT/<strategy>/seed-<n>/) from its runs' records, without running anything.")
    parser.add_argument("out", type=Path, help="the comparison folder (fedbarrier compare --out)")
    args = parser.parse_args(argv)
    try:
        summarize_folder(args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print((args.out / SUMMARY_MD).read_text(), end="")
    print(f"table and plots written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
