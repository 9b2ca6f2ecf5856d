"""The analysis figures draw from the JSON records, including undefined (null) values."""

from __future__ import annotations

import json

import torch

from fedbarrier.analysis import json_ready
from fedbarrier.analysis.subspace import subspace_analysis
from fedbarrier.plots.analysis import plot_robustness, plot_subspace, plot_subspace_layers


def test_subspace_plots_draw_a_record_with_an_empty_null_space(tmp_path):
    # Prepare: a 2-D parameter whose training subspace is the whole plane (null space undefined)
    groups = {"a": ["a.w"], "b": ["b.w"]}
    theta = {"a.w": torch.zeros(2, dtype=torch.float64), "b.w": torch.zeros(1, dtype=torch.float64)}
    other = {"a.w": torch.tensor([1.0, 0.0], dtype=torch.float64), "b.w": torch.ones(1, dtype=torch.float64)}
    third = {"a.w": torch.tensor([0.0, 1.0], dtype=torch.float64), "b.w": torch.ones(1, dtype=torch.float64)}

    def loss(states):
        return [{"loss": float(sum((s[k] ** 2).sum() for k in s)), "error": 0.0} for s in states]

    curves = subspace_analysis(theta, other, [theta, other, third], groups, loss, sigmas=[0.1, 0.5],
                               draws=2)
    record = json.loads(json.dumps(json_ready({"clients": [0, 1], "round": 3, "split": "test", "n": 10,
                                               **curves.to_record()})))
    assert record["curves"]["b"]["null"]["loss"]["mean"] == [None, None]
    # Execute
    paths = [plot_subspace(record, "loss", tmp_path / "s.png"),
             plot_subspace_layers(record, "loss", tmp_path / "l.png")]
    # Assert
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_robustness_plot_with_many_layers(tmp_path):
    layers = [f"layer{i}.conv" for i in range(21)]
    record = {"clients": [0, 1], "round": 1, "split": "train", "n": 50, "draws": 2, "layers": layers,
              "distance": {layer: 1.0 for layer in layers}, "base": {"error": 10.0},
              "interpolation": {"error": {layer: 0.5 for layer in layers}},
              "random": {"error": {layer: {"mean": 1.0, "std": 0.1, "draws": [0.9, 1.1]}
                                   for layer in layers}}}
    assert plot_robustness(record, "error", tmp_path / "r.png").stat().st_size > 10_000
