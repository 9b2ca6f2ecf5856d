"""Tables of experiments/run_layerwise.sh (issue 19), from the records via fedbarrier's tidy tables.

    python experiments/layerwise_report.py experiments/results/layerwise-convnet [SETTING ...]

For each setting (same initialization, different initializations, the cosine control): the last
epoch's barriers on the test split, mean ± sample std over seeds, with the full barrier's standard
error; every layer's barrier beside its share of the parameters and of the squared distance
between the two models; the cumulative barriers from the input (shallow) and from the output
(deep), the moving window of 2 layers and the mean over the random layer orders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import fedbarrier


def fmt(values, digits: int = 3) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.{digits}g}" if v.size == 1 else f"{v.mean():.{digits}g} ± {v.std(ddof=1):.2g}"


def last(run, split: str = "test"):
    table = run.barriers
    table = table[(table["split"] == split) & (~table["aligned"])]
    return table[table["round"] == table["round"].max()]


def setting_lines(name: str, runs: list) -> list[str]:
    lines = [f"### {name} ({len(runs)} seeds, epoch {runs[0].config.train.rounds}, test split, "
             f"n = {runs[0].config.barriers.n})", ""]
    full = {m: [float(last(r).query(f"family == 'full' and metric == '{m}'")["value"].iloc[0]) for r in runs]
            for m in ("error", "loss")}
    se = [float(last(r).query("family == 'full' and metric == 'error'")["se"].iloc[0]) for r in runs]
    accuracy = [100 - v for r in runs
                for v in last(r).query("family == 'endpoint' and metric == 'error'")["value"]]
    lines += [f"Full barrier: {fmt(full['error'])} pp test error (se within a run "
              f"{fmt(se, 2)}), {fmt(full['loss'])} test loss; the models' own test accuracy "
              f"{fmt(accuracy)} %.", ""]
    layers = list(runs[0].barriers.query("family == 'per_layer'")["layer_set"].drop_duplicates())
    lines += ["| layer | barrier, error (pp) | barrier, loss | share of parameters | share of ‖θ_A − θ_B‖² |",
              "|---|---|---|---|---|"]
    for layer in layers:
        cells = []
        for metric in ("error", "loss"):
            query = (f"family == 'per_layer' and metric == '{metric}' and stat == 'mean' "
                     f"and layer_set == '{layer}'")
            cells.append(fmt([float(last(r).query(query)["value"].iloc[0]) for r in runs]))
        shares = []
        for quantity in ("param_share", "sq_distance_share"):
            values = []
            for r in runs:
                d = r.distances
                d = d[(d["round"] == d["round"].max()) & (~d["aligned"]) & (d["scope"] == layer)
                      & (d["quantity"] == quantity)]
                values.append(float(d["value"].iloc[0]) if len(d) else float("nan"))
            shares.append(fmt([100 * v for v in values], 2) + " %")
        lines.append(f"| {layer} | {cells[0]} | {cells[1]} | {shares[0]} | {shares[1]} |")
    lines += ["", "Cumulative barriers, error (pp), mean over the default models: the first k layers "
              "averaged (shallow), the last k (deep), a moving window of 2 (position k: layers k and k+1), "
              "and the mean over 2 seeded random layer orders.", "",
              "| k | shallow | deep | window of 2 | random order |", "|---|---|---|---|---|"]
    for k in range(1, len(layers) + 1):
        cells = []
        for family in ("shallow", "deep"):
            cells.append(fmt([float(last(r).query(f"family == '{family}' and metric == 'error' and "
                                                    f"stat == 'mean' and k == {k}")["value"].iloc[0])
                              for r in runs]))
        window = []
        for r in runs:
            rows = last(r).query("family == 'window' and metric == 'error' and stat == 'mean'")
            rows = rows.drop_duplicates("layer_set")
            window.append(float(rows["value"].iloc[k - 1]) if k - 1 < len(rows) else float("nan"))
        random = [float(last(r).query(f"family.str.startswith('random') and metric == 'error' and "
                                      f"stat == 'mean' and k == {k}", engine="python")["value"].mean())
                  for r in runs]
        lines.append(f"| {k} | {cells[0]} | {cells[1]} | {fmt(window)} | {fmt(random)} |")
    return lines + [""]


def main(argv: list[str]) -> int:
    results = Path(argv[0] if argv else "experiments/results/layerwise-convnet")
    names = argv[1:] or ["same-init", "own-init", "same-init-cosine", "same-init-lr0.01", "own-init-lr0.01"]
    lines: list[str] = []
    for name in names:
        runs = [fedbarrier.load_run(p) for p in sorted((results / name).glob("seed-*"))]
        if runs:
            lines += setting_lines(name, runs)
            model = runs[0].config.model
    title = ("a 7-layer convnet" if model.name == "convnet" else
             f"`{model.name}` (width {model.width})")
    script = ("run_layerwise.sh" if model.name == "convnet" else
              f"run_layerwise_deep.sh {model.name}")
    lines = [f"# Layer-wise barriers of {title} on Fashion-MNIST", "",
             "Generated by `python experiments/layerwise_report.py` from the records of "
             f"`experiments/{script}`; mean ± sample std over seeds.", ""] + lines
    (results / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
