"""The deep linear network of BARRIERS.md through the project's barrier code."""

from __future__ import annotations

import json

from fedbarrier.analysis.deep_linear import deep_linear_example, second_differences
from fedbarrier.cli import main


def test_barriers_are_exactly_the_hand_checked_numbers():
    # Execute
    res = deep_linear_example(points=21)
    # Assert (exact: every number is a dyadic rational, computed in float64)
    assert res.full == 0.31640625
    assert res.per_layer["layer1"] == [0.140625, 2.25]  # default A, default B
    assert res.per_layer["layer2"] == [2.25, 0.140625]
    half = res.alphas.index(0.5)
    assert res.paths["full"][half] == 0.31640625
    assert res.paths["layer1"][half] == 0.140625
    assert res.paths["layer2"][half] == 2.25
    assert res.points["full"][half] == [1.25, 1.25]
    assert res.paths["full"][0] == res.paths["full"][-1] == 0.0


def test_single_layer_cuts_are_convex_and_the_full_path_is_not():
    # Execute
    res = deep_linear_example(points=41)
    # Assert
    assert min(second_differences(res.paths["layer1"])) >= 0
    assert min(second_differences(res.paths["layer2"])) >= 0
    assert min(second_differences(res.paths["full"])) < 0  # the bump
    assert max(res.paths["full"]) == res.paths["full"][20] == 0.31640625


def test_second_differences_detect_convexity():
    assert second_differences([1.0, 0.0, 1.0]) == [2.0]
    assert second_differences([0.0, 1.0, 0.0]) == [-2.0]


def test_command_prints_the_numbers_and_writes_json_and_plot(tmp_path, capsys):
    # Execute
    code = main(["analyze", "deep-linear", "--out", str(tmp_path), "--points", "11"])
    # Assert
    out = capsys.readouterr().out
    assert code == 0
    assert "0.31640625" in out and "0.14062500" in out and "2.25000000" in out
    record = json.loads((tmp_path / "deep_linear.json").read_text())
    assert record["full"] == 0.31640625 and len(record["alphas"]) == 11
    assert (tmp_path / "deep_linear.png").stat().st_size > 10_000
