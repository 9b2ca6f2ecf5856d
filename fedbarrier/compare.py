"""``fedbarrier compare``: strategies side by side on identical partitions and seeds.

Every (strategy, seed) pair is a normal run in ``OUT/<strategy>/seed-<seed>/``; the partition and
the initialization depend only on the data config and the seed, so all strategies of one seed see
the same clients with the same data and start from the same model. The summary compares
personalized accuracy (each client's model on its own local test part: shared layers just received
plus its personal layers), the global model's accuracy (every layer averaged, on the global test
set), communication, and barriers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedbarrier.config import Config
from fedbarrier.errors import UserError
from fedbarrier.runtime.rundir import RunDir, read_jsonl, write_atomic

COLUMNS = [
    ("final personalized acc (%)", "final_local"),
    ("best personalized acc (%)", "best_local"),
    ("final global acc (%)", "final_global"),
    ("MB communicated", "megabytes"),
    ("full barrier, test loss", "barrier_loss"),
    ("full barrier, test error (pp)", "barrier_error"),
    ("max per-layer barrier, test loss", "max_layer_loss"),
]


def run_summary(run_dir: Path) -> dict[str, float]:
    """The numbers one run contributes to the comparison (NaN where absent)."""
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m.get("round", 0) > 0]
    barriers = [b for b in read_jsonl(run_dir / "barriers.jsonl") if b.get("split") == "test"]

    def series(key: str) -> list[float]:
        return [float(m[key]) for m in metrics if isinstance(m.get(key), (int, float))]

    local, glob = series("local_test_accuracy"), series("global_test_accuracy")
    nan = float("nan")
    out = {
        "final_local": local[-1] if local else nan,
        "best_local": max(local) if local else nan,
        "final_global": glob[-1] if glob else nan,
        "megabytes": (sum(series("bytes_sent")) + sum(series("bytes_received"))) / 1e6,
        "barrier_loss": nan, "barrier_error": nan, "max_layer_loss": nan,
    }
    if barriers:
        last = barriers[-1]
        out["barrier_loss"] = last.get("full", {}).get("loss", nan)
        out["barrier_error"] = last.get("full", {}).get("error", nan)
        per_layer = last.get("per_layer", {}).get("loss", {})
        if per_layer:
            out["max_layer_loss"] = max(v["mean"] for v in per_layer.values())
    return out


def _fmt(values: list[float]) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)])
    if v.size == 0:
        return "–"
    return f"{v.mean():.3g}" if v.size == 1 else f"{v.mean():.3g} ± {v.std(ddof=1):.2g}"


def summarize(runs: dict[str, list[Path]]) -> tuple[str, str]:
    """(markdown table, CSV) over seeds: mean ± sample std."""
    rows = {s: [run_summary(p) for p in paths] for s, paths in runs.items()}
    header = ["strategy", "seeds"] + [title for title, _ in COLUMNS]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["strategy", "seed"] + [key for _, key in COLUMNS])
    for strategy, summaries in rows.items():
        cells = [strategy, str(len(summaries))]
        cells += [_fmt([s[key] for s in summaries]) for _, key in COLUMNS]
        md.append("| " + " | ".join(cells) + " |")
        for path, s in zip(runs[strategy], summaries):
            writer.writerow([strategy, path.name.removeprefix("seed-")] + [s[k] for _, k in COLUMNS])
    return "\n".join(md) + "\n", buf.getvalue()


def compare(cfg: Config, strategies: Sequence[str], seeds: Sequence[int], out: Path, *,
            force: bool = False, progress: bool = True) -> dict[str, list[Path]]:
    """Run every strategy for every seed, then write the table and the comparison plots."""
    from fedbarrier.fl.simulation import preflight, run_experiment
    from fedbarrier.plots.compare import plot_comparison

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
    for seed in seeds:
        for name in strategies:
            run = out / name.replace(":", "-").replace("/", "-") / f"seed-{seed}"
            if progress:
                print(f"== {name}, seed {seed} -> {run}", flush=True)
            run_experiment(replace(configs[name], seed=seed), run, force=True, progress=progress)
            runs[name].append(run)
    markdown, table = summarize(runs)
    RunDir(out).write_text("summary.md", markdown)
    write_atomic(out / "summary.csv", table)
    plot_comparison(runs, out)
    print(markdown)
    return runs


def parse_list(text: str, kind: type = str) -> list[Any]:
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{text!r} must be a comma-separated list of {kind.__name__}s") from None
