"""plot_run on tiny synthetic run directories: which PNGs appear, and which are skipped."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedbarrier.plots import plot_run
from fedbarrier.plots.drawing import _symmetric_norm
from fedbarrier.plots.run import _by_split

LAYERS = ["conv1", "conv2", "fc"]
SPLITS = ("train", "test")
METRICS = ("loss", "error")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(rng: np.random.Generator) -> dict[str, Any]:
    values = rng.normal(size=2).tolist()  # signed on purpose: barriers are never clipped
    return {"per_default": values, "mean": float(np.mean(values)), "max": max(values)}


def _record(server_round: int, split: str, *, curve: bool = True, distances: bool = True) -> dict[str, Any]:
    """One barriers.jsonl line with 2 clients and 3 layers, shaped like the evaluator's output."""
    rng = np.random.default_rng(server_round * 10 + len(split))
    alphas = [0.0, 0.5, 1.0]
    rec: dict[str, Any] = {
        "round": server_round, "split": split, "n": 32, "clients": [0, 1], "layers": LAYERS,
        "weights": [0.5, 0.5], "defaults": [0, 1],
        "endpoint": {m: [1.0, 1.2] for m in METRICS},
        "reference": {m: 1.1 for m in METRICS},
        "full": {m: float(rng.normal()) for m in METRICS},
        "per_layer": {m: {layer: _summary(rng) for layer in LAYERS} for m in METRICS},
        "shallow": {m: [_summary(rng) for _ in LAYERS] for m in METRICS},
        "deep": {m: [_summary(rng) for _ in LAYERS] for m in METRICS},
        "curve": {m: {"pair": [0, 1], "alphas": alphas, "values": [1.0, 1.5, 1.2],
                      "barrier": [0.0, 0.4, 0.0], "max": 0.4} for m in METRICS} if curve else {},
        "distances": None,
        "seconds": 0.1,
    }
    if distances:
        rec["distances"] = {name: {"l2_to_avg": [0.1, 0.2], "cos_to_avg": [0.9, 0.95],
                                   "pairwise_l2": 0.3, "pairwise_cos": 0.8}
                            for name in [*LAYERS, "model"]}
    return rec


def _metrics_lines(rounds: int) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = [{"round": 0, "global_test_loss": 2.3, "global_test_accuracy": 10.0}]
    for r in range(1, rounds + 1):
        lines.append({"round": r, "train_loss": 1.0 / r, "global_test_loss": 2.0 / r,
                      "global_test_accuracy": 10.0 + 20 * r, "local_test_accuracy": None,
                      "local_test_loss": 1.5})
    return lines


def _write_run(path: Path, rounds: int = 3, barriers: list[dict[str, Any]] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in _metrics_lines(rounds)))
    if barriers is not None:
        (path / "barriers.jsonl").write_text("".join(json.dumps(b) + "\n" for b in barriers))
    return path


def _barrier_names(families: tuple[str, ...]) -> set[str]:
    return {f"{fam}_{split}_{metric}.png" for fam in families for split in SPLITS for metric in METRICS}


def _check_written(paths: list[Path], run: Path) -> set[str]:
    """Every returned path is a non-empty PNG in RUN_DIR/plots, and nothing else was written there."""
    for path in paths:
        assert path.parent == run / "plots"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 1000
    on_disk = {p.name for p in (run / "plots").iterdir()}
    assert on_disk == {p.name for p in paths}
    return on_disk


def test_full_run_writes_every_plot(tmp_path: Path) -> None:
    records = [_record(r, s) for r in (1, 2, 3) for s in SPLITS]
    run = _write_run(tmp_path / "run", barriers=records)
    names = _check_written(plot_run(run), run)
    expected = _barrier_names(("per_layer", "cumulative", "curve"))
    assert names == expected | {"full_barrier.png", "distances.png", "accuracy.png"}


def test_run_without_barriers_writes_only_accuracy(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", barriers=None)
    assert _check_written(plot_run(str(run)), run) == {"accuracy.png"}


def test_records_without_curve_or_distances_skip_those_plots(tmp_path: Path) -> None:
    records = [_record(r, s, curve=False, distances=False) for r in (1, 2) for s in SPLITS]
    run = _write_run(tmp_path / "run", barriers=records)
    names = _check_written(plot_run(run), run)
    assert names == _barrier_names(("per_layer", "cumulative")) | {"full_barrier.png", "accuracy.png"}


def test_single_round_one_split_nulls_and_torn_line(tmp_path: Path) -> None:
    rec = _record(2, "test")
    rec["per_layer"]["loss"]["conv2"] = {"per_default": [None, None], "mean": None, "max": None}
    rec["full"]["error"] = None
    rec["per_layer"]["error"] = {}  # a metric that was not measured for this family
    rec["deep"] = {}
    run = _write_run(tmp_path / "run", rounds=2, barriers=[rec])
    with open(run / "barriers.jsonl", "a") as fh:
        fh.write('{"round": 3, "split": "te')  # a run killed mid-write
    names = _check_written(plot_run(run), run)
    assert names == {"per_layer_test_loss.png", "cumulative_test_loss.png", "cumulative_test_error.png",
                     "curve_test_loss.png", "curve_test_error.png", "full_barrier.png",
                     "distances.png", "accuracy.png"}


def test_repeated_measurement_keeps_the_last_and_orders_by_round() -> None:
    first, second, other = _record(2, "test"), _record(2, "test"), _record(1, "test")
    second["n"] = 99
    grouped = _by_split([first, other, second, _record(1, "train")])
    assert list(grouped) == ["train", "test"]
    assert [r["round"] for r in grouped["test"]] == [1, 2]
    assert grouped["test"][1]["n"] == 99


@pytest.mark.parametrize(("values", "limit"), [([-1.0, 3.0], 3.0), ([0.5, 2.0], 2.0), ([math.nan], 1.0)])
def test_colour_scale_is_symmetric_about_zero(values: list[float], limit: float) -> None:
    norm = _symmetric_norm(np.array(values))
    assert (norm.vmin, norm.vmax) == (-limit, limit)
