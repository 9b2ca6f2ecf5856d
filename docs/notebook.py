# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # fedbarrier from a notebook
#
# A run, its tables and its figures, from Python. This file is a notebook in the *percent*
# format: open it in VS Code or JupyterLab (with jupytext) and run it cell by cell, or run it
# whole with `python docs/notebook.py`. The test suite executes it end to end
# (`tests/test_notebook.py`) on a tiny run.
#
# Every column of the tables is documented in `fedbarrier/outputs/tables.py`; the records they
# come from in `docs/records.md`; the barrier definitions in `docs/BARRIERS.md`.

# %%
import os
import shlex

import fedbarrier

CONFIG = os.environ.get("FEDBARRIER_NOTEBOOK_CONFIG", "experiments/quickstart.toml")
OVERRIDES = shlex.split(os.environ.get("FEDBARRIER_NOTEBOOK_SET", "train.rounds=2"))
OUT = os.environ.get("FEDBARRIER_NOTEBOOK_OUT", "runs/notebook")

# %% [markdown]
# ## Run an experiment
# `fedbarrier.run` takes what `fedbarrier run` takes: a config file (or a `Config`), `--set`
# style overrides and the run directory. It returns the run, loaded. An existing run is loaded
# with `fedbarrier.load_run(path)` instead.

# %%
run = fedbarrier.run(CONFIG, OVERRIDES, out=OUT, force=True, progress=False)
run.config.strategy.name, run.config.train.rounds

# %% [markdown]
# ## One row per round
# Accuracies, losses, communication, time, and each client's personalized accuracy
# (`local_test_accuracy/<client>`).

# %%
run.metrics[["round", "global_test_accuracy", "local_test_accuracy", "train_loss", "wall_seconds"]]

# %% [markdown]
# ## Barriers, tidy
# One row per recorded number: round × split × metric × family × layer set × client or
# statistic, with its standard error. Filter, then pivot.

# %%
barriers = run.barriers
per_layer = (barriers
             .query("split == 'test' and metric == 'error' and family == 'per_layer' and stat == 'mean'")
             .pivot_table(index="layer_set", columns="round", values="value", sort=False))
per_layer

# %% [markdown]
# The federated user's question, *does adopting the averaged layer hurt my model on my data?*,
# is answered by the local barriers: each client's own value and its standard error.

# %%
last = barriers["round"].max()
own = barriers.query("side == 'local' and split == 'local-test' and metric == 'error' "
                     "and family == 'per_layer' and stat == 'barrier' and round == @last")
own.assign(significant=own["value"] > 2 * own["se"]).pivot_table(
    index="client", columns="layer_set", values="significant", aggfunc="first", sort=False)

# %% [markdown]
# ## Figures
# `run.plot(kind, split=..., metric=...)` returns a matplotlib figure: `accuracy`, `full`,
# `per_layer`, `shallow`, `deep`.

# %%
figure = run.plot("per_layer", split="local-test", metric="error")
figure

# %%
run.plot("full", split="test", metric="loss")

# %% [markdown]
# ## Export
# The same tables as CSV (or Parquet, with pyarrow) for other tools; the command line does the
# same with `fedbarrier export RUN_DIR --format csv`.

# %%
written = run.export(fmt="csv")
[path.name for path in written]
