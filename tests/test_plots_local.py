"""Plots of local barriers, adopted layers and standard errors, from hand-written records.

The figures are captured just before they are saved (``_save`` clears them), so the tests check the
arrays actually drawn, not only that a PNG exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

import fedbarrier.plots.local as local_plots
import fedbarrier.plots.run as run_plots
from fedbarrier.plots import plot_run
from fedbarrier.plots.local import adoption_grid, client_grids
from fedbarrier.plots.records import full_se, full_value, layer_order, local_mean_se
from fedbarrier.plots.run import _by_split, _full_series

LAYERS = ["a", "b"]
# client id -> (p, per-layer loss, per-layer loss se, full loss, full loss se)
CLIENTS = {"0": (0.25, [0.10, -0.20], [0.01, 0.30], 0.50, 0.40),
           "2": (0.75, [0.30, 0.05], [0.05, 0.10], -0.10, 0.20),
           "10": (0.0, [0.0, 0.0], [None, None], 0.0, None)}  # weight 0 stands for a tiny client


def _stats(values: list[float], p: list[float]) -> dict[str, float]:
    q = np.quantile(values, (0.1, 0.5, 0.9))
    return {"mean": float(np.dot(p, values)), "max": max(values),
            "q10": float(q[0]), "q50": float(q[1]), "q90": float(q[2])}


def local_record(server_round: int, split: str = "local-test", clients: dict[str, Any] = CLIENTS,
                 scale: float = 1.0) -> dict[str, Any]:
    """A local record shaped like ``RoundPipeline.local_reports`` writes it (loss metric only)."""
    ids = list(clients)
    p = [clients[c][0] for c in ids]
    by_client = {}
    for cid, (_, layer, layer_se, full, se) in clients.items():
        by_client[cid] = {
            "n": 10, "layers": LAYERS, "families": ["full", "per_layer"],
            "endpoint": {"loss": 0.5}, "full": {"loss": scale * full}, "full_se": {"loss": se},
            "per_layer": {"loss": {name: scale * v for name, v in zip(LAYERS, layer)}},
            "per_layer_se": {"loss": dict(zip(LAYERS, layer_se))},
        }
    return {
        "round": server_round, "split": split, "clients": [int(c) for c in ids], "weights": p,
        "skipped_clients": {}, "missing_clients": [],
        "endpoint": {"loss": _stats([0.5] * len(ids), p)},
        "full": {"loss": _stats([scale * clients[c][3] for c in ids], p)},
        "per_layer": {"loss": {name: _stats([scale * clients[c][1][j] for c in ids], p)
                               for j, name in enumerate(LAYERS)}},
        "by_client": by_client,
    }


def server_record(server_round: int, split: str, full: float, se: float | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"round": server_round, "split": split, "n": 20, "layers": LAYERS,
                           "clients": [0, 2], "weights": [0.5, 0.5], "full": {"loss": full},
                           "per_layer": {"loss": {name: {"per_default": [0.1, 0.2], "mean": 0.15,
                                                         "max": 0.2} for name in LAYERS}}}
    if se is not None:
        rec["full_se"] = {"loss": se}
    return rec


def adoption_metrics() -> list[dict[str, Any]]:
    return [{"round": 0, "global_test_accuracy": 10.0},
            {"round": 1, "adopted_layers": {"0": ["a", "b"], "2": ["a", "b"]}},
            {"round": 2, "adopted_layers": {"0": ["b"], "2": [], "10": ["a", "extra"]}},
            {"round": 3, "global_test_accuracy": 50.0},  # a round without the key is not drawn
            {"round": 4, "adopted_layers": {"2": ["a"]}}]


def write_run(path: Path, barriers: list[dict[str, Any]],
              metrics: list[dict[str, Any]] | None = None) -> Path:
    path.mkdir(parents=True)
    lines = metrics if metrics is not None else [{"round": r, "global_test_accuracy": 50.0}
                                                 for r in (0, 1, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (path / "barriers.jsonl").write_text("".join(json.dumps(b) + "\n" for b in barriers))
    return path


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[np.ndarray]]:
    """File name -> the arrays of the images drawn in that figure, captured before saving."""
    captured: dict[str, list[np.ndarray]] = {}
    real = run_plots._save

    def save(fig: Figure, path: Path) -> Path:
        captured[path.name] = [np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)
                               for ax in fig.axes for image in ax.images]
        return real(fig, path)

    monkeypatch.setattr(run_plots, "_save", save)
    monkeypatch.setattr(local_plots, "_save", save)
    return captured


# --------------------------------------------------------------------------------------------- records


def test_local_mean_se_is_sqrt_of_sum_p2_se2() -> None:
    rec = local_record(1, clients={k: v for k, v in CLIENTS.items() if k != "10"})
    # p = (0.25, 0.75), full se = (0.4, 0.2): sqrt(0.0625 * 0.16 + 0.5625 * 0.04) = sqrt(0.0325)
    assert local_mean_se(rec, "full", "loss") == pytest.approx(math.sqrt(0.0325))
    assert full_se(rec, "loss") == pytest.approx(math.sqrt(0.0325))
    # layer b: se = (0.3, 0.1): sqrt(0.0625 * 0.09 + 0.5625 * 0.01) = sqrt(0.01125)
    assert local_mean_se(rec, "per_layer", "loss", "b") == pytest.approx(math.sqrt(0.01125))
    assert full_value(rec, "loss") == pytest.approx(0.25 * 0.5 - 0.75 * 0.1)


def test_local_mean_se_is_nan_when_a_client_has_none() -> None:
    rec = local_record(1)  # client 10 recorded no se
    assert math.isnan(local_mean_se(rec, "full", "loss"))
    del rec["by_client"]
    assert math.isnan(local_mean_se(rec, "full", "loss"))


def test_server_se_and_its_absence() -> None:
    assert full_se(server_record(1, "test", 0.3, se=0.05), "loss") == 0.05
    assert math.isnan(full_se(server_record(1, "test", 0.3), "loss"))
    rec = server_record(1, "test", 0.3)
    rec["full_se"] = {"loss": None}  # n < 2: no se
    assert math.isnan(full_se(rec, "loss"))


def test_layer_order_of_local_records() -> None:
    rec = local_record(1)
    assert layer_order([rec]) == LAYERS
    del rec["by_client"]
    assert layer_order([rec]) == LAYERS  # the order of the per_layer summary


def test_splits_server_first_then_local() -> None:
    grouped = _by_split([local_record(1, "local-test"), local_record(1, "local-train"),
                         server_record(1, "test", 0.1), server_record(1, "train", 0.1)])
    assert list(grouped) == ["train", "test", "local-train", "local-test"]


# ---------------------------------------------------------------------------------------------- data


def test_client_grid_rows_are_clients_in_numeric_order() -> None:
    ids, layers, values, ses = client_grids(local_record(1), "loss")
    assert ids == ["0", "2", "10"] and layers == LAYERS
    np.testing.assert_allclose(values, [[0.10, -0.20, 0.50], [0.30, 0.05, -0.10], [0.0, 0.0, 0.0]])
    assert np.isnan(ses[2]).all()
    np.testing.assert_allclose(ses[0], [0.01, 0.30, 0.40])


def test_adoption_grid_marks_adopted_kept_and_absent() -> None:
    rounds, ids, names, grid = adoption_grid(adoption_metrics(), LAYERS)
    assert rounds == [1, 2, 4] and ids == ["0", "2", "10"]
    assert names == ["a", "b", "extra"]  # model order first, then unknown names as they appear
    nan = math.nan
    np.testing.assert_array_equal(grid[:, :, 1], [[0, 1, 0], [0, 0, 0], [1, 0, 1]])  # round 2
    np.testing.assert_array_equal(grid[0, :, 2], [nan, nan, nan])  # client 0 absent in round 4
    np.testing.assert_array_equal(grid[2, :, 0], [nan, nan, nan])  # client 10 absent in round 1


# --------------------------------------------------------------------------------------------- plots


def test_plot_run_draws_local_barriers(tmp_path: Path, drawn: dict[str, list[np.ndarray]]) -> None:
    records = [server_record(r, s, 0.1 * r, se=0.01) for r in (1, 2) for s in ("train", "test")]
    records += [local_record(r, s, scale=r) for r in (1, 2) for s in ("local-train", "local-test")]
    records.append({"round": 3, "split": "local-test", "skipped": "the strategy sends no average"})
    run = write_run(tmp_path / "run", records)
    names = {p.name for p in plot_run(run)}
    assert {"per_layer_local-train_loss.png", "per_layer_local-test_loss.png",
            "local_clients_local-train_loss.png", "local_clients_local-test_loss.png",
            "per_layer_train_loss.png", "per_layer_test_loss.png", "full_barrier.png"} <= names
    assert "adopted_layers.png" not in names  # no adopted_layers in metrics.jsonl
    assert all((run / "plots" / name).stat().st_size > 1000 for name in names)

    # layers x rounds of the p-weighted mean over clients (round 2 has every value doubled)
    (per_layer,) = drawn["per_layer_local-test_loss.png"]
    mean_a, mean_b = 0.25 * 0.10 + 0.75 * 0.30, 0.25 * -0.20 + 0.75 * 0.05
    np.testing.assert_allclose(per_layer, [[mean_a, 2 * mean_a], [mean_b, 2 * mean_b]])
    # clients x layers in the last measured round (2; round 3 was skipped), and the full column
    layer_grid, full_grid = drawn["local_clients_local-test_loss.png"]
    np.testing.assert_allclose(layer_grid, [[0.20, -0.40], [0.60, 0.10], [0.0, 0.0]])
    np.testing.assert_allclose(full_grid, [[1.0], [-0.2], [0.0]])


def test_plot_run_draws_adopted_layers(tmp_path: Path, drawn: dict[str, list[np.ndarray]]) -> None:
    run = write_run(tmp_path / "run", [server_record(1, "test", 0.1)], adoption_metrics())
    assert "adopted_layers.png" in {p.name for p in plot_run(run)}
    clients_by_columns, share = drawn["adopted_layers.png"]
    # layer-major columns: a@1, a@2, a@4, b@1, b@2, b@4, extra@1, extra@2, extra@4
    nan = math.nan
    np.testing.assert_array_equal(clients_by_columns, [[1, 0, nan, 1, 1, nan, 0, 0, nan],
                                                       [1, 0, 1, 1, 0, 0, 0, 0, 0],
                                                       [nan, 1, nan, nan, 0, nan, nan, 1, nan]])
    np.testing.assert_allclose(share, [[1, 1 / 3, 1], [1, 1 / 3, 0], [0, 1 / 3, 0]])


def test_full_barrier_error_bars(tmp_path: Path) -> None:
    ax = Figure().add_subplot()
    _full_series(ax, [server_record(1, "test", 0.3, se=0.05), server_record(2, "test", 0.2)], "test",
                 "loss", "C0")
    (bars,) = ax.containers
    line, _, (segments,) = bars.lines
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.2])
    lows_highs = [seg[:, 1] for seg in segments.get_segments()]
    np.testing.assert_allclose(lows_highs, [[0.25, 0.35], [0.2, 0.2]])  # no se recorded: no bar

    ax = Figure().add_subplot()
    clients = {k: v for k, v in CLIENTS.items() if k != "10"}
    _full_series(ax, [local_record(1, clients=clients)], "local-test", "loss", "C2")
    (bars,) = ax.containers
    (segment,) = bars.lines[2][0].get_segments()
    mean, se = 0.25 * 0.5 - 0.75 * 0.1, math.sqrt(0.0325)
    np.testing.assert_allclose(segment[:, 1], [mean - se, mean + se])
    assert len(ax.collections) >= 1  # the band between the clients' 10 % and 90 % quantiles

    ax = Figure().add_subplot()  # no se anywhere: a plain line, as before
    _full_series(ax, [server_record(1, "test", 0.3)], "test", "loss", "C0")
    assert not ax.containers and len(ax.lines) == 1
