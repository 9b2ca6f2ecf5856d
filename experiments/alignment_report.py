"""Tables of the permutation-alignment experiments (experiments/run_alignment.sh), from the records.

    python experiments/alignment_report.py experiments/results/alignment

Writes RESULTS/summary.md: (a) for the CNN and the MLP trained centrally from different
initializations, the full and per-layer barriers of the last epoch on the test split, unaligned and
after weight matching, mean ± std over seeds, and the share of the full barrier alignment removes;
(b) FedAvg against aligned-fedavg with a common and an own initialization: accuracies and the
barriers of the last measured round, both ways. Read with fedbarrier's own tidy tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

import fedbarrier


def fmt(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.3g}" if v.size == 1 else f"{v.mean():.3g} ± {v.std(ddof=1):.2g}"


def last_values(run, *, split: str, family: str, metric: str, stat: str) -> pd.DataFrame:
    table = run.barriers
    rows = table[(table["split"] == split) & (table["family"] == family) & (table["metric"] == metric)
                 & (table["stat"] == stat)]
    return rows[rows["round"] == rows["round"].max()]


def centralized(results: Path) -> list[str]:
    lines = ["## (a) Two models from different initializations, trained centrally", ""]
    for model in ("cnn", "mlp"):
        runs = [fedbarrier.load_run(p) for p in sorted((results / f"centralized-{model}").glob("seed-*"))]
        if not runs:
            continue
        epochs = runs[0].config.train.rounds
        lines += [f"### {model} ({len(runs)} seeds, epoch {epochs}, test split, n = "
                  f"{runs[0].config.barriers.n})", "",
                  "| barrier | unaligned | aligned | removed by alignment |", "|---|---|---|---|"]
        for metric, unit in (("error", "pp"), ("loss", "")):
            plain, aligned = [], []
            for run in runs:
                rows = last_values(run, split="test", family="full", metric=metric, stat="value")
                plain.append(float(rows[~rows["aligned"]]["value"].iloc[0]))
                aligned.append(float(rows[rows["aligned"]]["value"].iloc[0]))
            removed = [1 - a / p for p, a in zip(plain, aligned) if p > 0]
            lines.append(f"| full, {metric}{f' ({unit})' if unit else ''} | {fmt(plain)} | {fmt(aligned)} | "
                         f"{fmt([100 * r for r in removed])} % |")
        layers = runs[0].barriers.query("family == 'per_layer'")["layer_set"].drop_duplicates().tolist()
        for layer in layers:
            plain, aligned = [], []
            for run in runs:
                rows = last_values(run, split="test", family="per_layer", metric="error", stat="mean")
                rows = rows[rows["layer_set"] == layer]
                plain.append(float(rows[~rows["aligned"]]["value"].iloc[0]))
                aligned.append(float(rows[rows["aligned"]]["value"].iloc[0]))
            lines.append(f"| layer {layer}, error (pp) | {fmt(plain)} | {fmt(aligned)} | |")
        distance = []
        for run in runs:
            d = run.distances
            d = d[(d["round"] == d["round"].max()) & (d["scope"] == "model")
                  & (d["quantity"] == "pairwise_l2")]
            distance.append((float(d[~d["aligned"]]["value"].iloc[0]),
                             float(d[d["aligned"]]["value"].iloc[0])))
        lines += [f"| ‖θ_A − θ_B‖ (whole model) | {fmt([a for a, _ in distance])} | "
                  f"{fmt([b for _, b in distance])} | |", ""]
        accuracy = [100 - float(v) for run in runs
                    for v in last_values(run, split="test", family="endpoint", metric="error",
                                         stat="value")["value"]]
        lines += [f"The two models' own test accuracy after the last epoch: {fmt(accuracy)} % "
                  f"({len(accuracy)} models).", ""]
    return lines


def federated(results: Path) -> list[str]:
    folder = results / "federated"
    if not folder.is_dir():
        return []
    comparison = fedbarrier.load_comparison(folder)
    lines = ["## (b) FedAvg and aligned-fedavg, 10 clients, Dirichlet α = 0.5", "",
             "| init | strategy | seeds | final global acc (%) | final personalized acc (%) | "
             "full barrier, test error (pp), unaligned | aligned | local full barrier, local-test error "
             "(pp), unaligned | aligned | align seconds per round |", "|" + "---|" * 10]
    for group, runs in comparison.runs.items():
        init = (comparison.grid or {}).get(group, {}).get("train.client_init", "")
        strategy = group.rpartition("/")[2]
        cells: dict[str, list[float]] = {k: [] for k in ("glob", "local", "b", "ba", "l", "la", "sec")}
        for run in runs:
            m = run.metrics
            cells["glob"].append(float(m["global_test_accuracy"].iloc[-1]))
            cells["local"].append(float(m["local_test_accuracy"].iloc[-1]))
            for key, split, stat in (("b", "test", "value"), ("l", "local-test", "mean")):
                rows = last_values(run, split=split, family="full", metric="error", stat=stat)
                cells[key].append(float(rows[~rows["aligned"]]["value"].iloc[0]))
                cells[key + "a"].append(float(rows[rows["aligned"]]["value"].iloc[0]))
            if "align_seconds" in m:
                cells["sec"].append(float(m["align_seconds"].iloc[1:].mean()))
        lines.append(f"| {init} | {strategy} | {len(runs)} | {fmt(cells['glob'])} | {fmt(cells['local'])} | "
                     f"{fmt(cells['b'])} | {fmt(cells['ba'])} | {fmt(cells['l'])} | {fmt(cells['la'])} | "
                     f"{fmt(cells['sec'])} |")
    lines.append("")
    first = comparison.barriers
    first = first[(first["round"] == first["round"].min()) & (first["split"] == "test")
                  & (first["family"] == "full") & (first["metric"] == "error")]
    lines += ["Full barrier, test error (pp), in the first measured round:", "",
              "| init | strategy | unaligned | aligned |", "|---|---|---|---|"]
    for (init, strategy), rows in first.groupby(["train.client_init", "strategy"], sort=False):
        lines.append(f"| {init} | {strategy} | {fmt(rows[~rows['aligned']]['value'])} | "
                     f"{fmt(rows[rows['aligned']]['value'])} |")
    return lines + [""]


def main(argv: list[str]) -> int:
    results = Path(argv[0] if argv else "experiments/results/alignment")
    lines = ["# Permutation alignment: results", "",
             "Generated by `python experiments/alignment_report.py` from the records of "
             "`experiments/run_alignment.sh`; mean ± sample std over seeds.", ""]
    lines += centralized(results) + federated(results)
    (results / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
