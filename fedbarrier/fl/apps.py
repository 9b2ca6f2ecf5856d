"""The apps that ``flwr run .`` starts (``[tool.flwr.app.components]`` in pyproject.toml).

Config path, overrides and output folder come from the run config (``[tool.flwr.app.config]``);
``fedbarrier run`` builds its own apps around a validated config instead.
"""

from __future__ import annotations

import sys

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedbarrier.fl.client_app import config_from_context, make_client_app, out_from_context
from fedbarrier.fl.server_app import run_server, server_data_warning
from fedbarrier.fl.simulation import prepare_run

client = make_client_app()
server = ServerApp()


@server.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = config_from_context(context)
    if (warning := server_data_warning(cfg, grid)) is not None:
        print(warning, file=sys.stderr, flush=True)
    run_dir = prepare_run(cfg, out_from_context(context), force=True)
    run_server(grid, cfg, run_dir)
    if cfg.output.plots:
        from fedbarrier.plots import plot_run

        plot_run(run_dir.path)
