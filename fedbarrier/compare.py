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
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedbarrier.config import Config, load_config
from fedbarrier.errors import RunAborted, UserError
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
              finished: dict[str, list[bool]] | None = None) -> tuple[str, str]:
    """(markdown table, CSV) over seeds: mean ± sample std, and the within-run se where there is one.

    Cells are over the finished runs only (``finished``: :func:`run_finished` of each run, read
    from the runs when not given); a run that stopped early is counted in "seeds" apart and keeps
    its numbers in the CSV (``finished`` = 0).
    """
    rows = {s: [run_summary(p) for p in paths] for s, paths in runs.items()}
    if finished is None:
        finished = {s: [run_finished(p) for p in paths] for s, paths in runs.items()}
    header = ["strategy", "seeds"] + [title for title, _ in COLUMNS]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = [key for _, key in COLUMNS] + list(SE_COLUMNS.values())
    writer.writerow(["strategy", "seed", "finished"] + keys)
    for strategy, summaries in rows.items():
        done = [s for s, ok in zip(summaries, finished[strategy]) if ok]
        stopped = len(summaries) - len(done)
        cells = [strategy, f"{len(done)} (+{stopped} stopped)" if stopped else str(len(done))]
        cells += [_fmt([s[key] for s in done],
                       [s[SE_COLUMNS[key]] for s in done] if key in SE_COLUMNS else None)
                  for _, key in COLUMNS]
        md.append("| " + " | ".join(cells) + " |")
        for path, s, ok in zip(runs[strategy], summaries, finished[strategy]):
            writer.writerow([strategy, path.name.removeprefix("seed-"), int(ok)] + [s[k] for k in keys])
    return "\n".join(md) + "\n", buf.getvalue()


def _write_summary(runs: dict[str, list[Path]], out: Path) -> str:
    """Write summary.md, summary.csv and the comparison plots into ``out``; returns the markdown."""
    from fedbarrier.plots.compare import plot_comparison

    finished = {s: [run_finished(p) for p in paths] for s, paths in runs.items()}
    markdown, table = summarize(runs, finished)
    RunDir(out).write_text(SUMMARY_MD, markdown)
    write_atomic(out / SUMMARY_CSV, table)
    # the curves of the finished runs, as the table; a strategy with none shows where it stopped
    curves = {}
    for strategy, paths in runs.items():
        done = [p for p, ok in zip(paths, finished[strategy]) if ok]
        curves[strategy if done else f"{strategy} (stopped)"] = done or paths
    plot_comparison(curves, out)
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


def summarize_folder(out: Path) -> dict[str, list[Path]]:
    """Rebuild summary.md, summary.csv and the comparison plots of an existing comparison folder.

    Nothing is run: the table is recomputed from the runs' records (e.g. after records gained
    standard errors, or after the table gained columns). Returns the runs, as :func:`compare`.
    """
    out = Path(out)
    runs = find_runs(out)
    if not runs:
        raise UserError(f"{str(out)!r} holds no runs: expected OUT/<strategy>/seed-<n>/metrics.jsonl")
    _write_summary(runs, out)
    return runs


def compare(cfg: Config, strategies: Sequence[str], seeds: Sequence[int], out: Path, *,
            force: bool = False, progress: bool = True) -> dict[str, list[Path]]:
    """Run every strategy for every seed, then write the table and the comparison plots."""
    from fedbarrier.fl.simulation import preflight, run_experiment

    if not strategies:
        raise UserError("--strategies needs at least one strategy name")
    configs = {}
    for name in strategies:  # validate every strategy before running any
        configs[name] = replace(cfg, strategy=replace(cfg.strategy, name=name),
                                output=replace(cfg.output, plots=False))
        preflight(configs[name])
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"comparison folder {str(out)!r} already holds results; pass --force or "
                        "choose another --out")
    runs: dict[str, list[Path]] = {name: [] for name in strategies}
    stopped: list[str] = []
    for seed in seeds:
        for name in strategies:
            run = out / run_folder_name(name) / f"seed-{seed}"
            if progress:
                print(f"== {name}, seed {seed} -> {run}", flush=True)
            try:
                run_experiment(replace(configs[name], seed=seed), run, force=True, progress=progress)
            except RunAborted as exc:  # a result (e.g. divergence), not a reason to stop the rest
                print(f"== {name}, seed {seed} stopped early: {exc}", file=sys.stderr, flush=True)
                stopped.append(f"{name} seed {seed} ({exc})")
            runs[name].append(run)
    print(_write_summary(runs, out))
    if stopped:
        raise RunAborted(f"{len(stopped)} of {len(seeds) * len(strategies)} runs stopped early: "
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
