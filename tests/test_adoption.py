"""The barrier-aware adoption rule, with hand-made barriers."""

from __future__ import annotations

import pytest

from fedbarrier.measure.adoption import adopt_layers


def table(values: dict[frozenset, tuple[float, float]]):
    calls = []

    def measure(layers):
        calls.append(list(layers))
        return values[frozenset(layers)]

    return measure, calls


def test_layers_are_tried_by_increasing_barrier_and_added_while_not_significant() -> None:
    single = {"conv1": 0.30, "conv2": -0.10, "fc1": 0.05, "fc2": 2.0}
    measure, calls = table({
        frozenset({"conv2"}): (-0.1, 0.05),
        frozenset({"conv2", "fc1"}): (0.08, 0.05),  # 0.08 <= 2 * 0.05: still adopted
        frozenset({"conv2", "fc1", "conv1"}): (0.25, 0.05),  # 0.25 > 0.10: stop here
    })
    result = adopt_layers(single, measure, z=2.0)
    assert result.layers == ["conv2", "fc1"]
    assert result.order == ["conv2", "fc1", "conv1", "fc2"]
    assert calls == [["conv2"], ["conv2", "fc1"], ["conv2", "fc1", "conv1"]]  # fc2 never tried
    assert result.cumulative == [(-0.1, 0.05), (0.08, 0.05), (0.25, 0.05)]


def test_z_zero_adopts_only_sets_that_do_not_hurt_at_all() -> None:
    measure, _ = table({frozenset({"a"}): (0.0, 0.1), frozenset({"a", "b"}): (0.01, 0.1)})
    assert adopt_layers({"a": 0.0, "b": 0.0}, measure, z=0.0).layers == ["a"]
    assert adopt_layers({"a": 0.0, "b": 0.0}, measure, z=1.0).layers == ["a", "b"]


def test_ties_are_broken_by_name_and_a_first_failure_adopts_nothing() -> None:
    measure, calls = table({frozenset({"a"}): (1.0, 0.1)})
    assert adopt_layers({"b": 0.5, "a": 0.5}, measure, z=2.0).layers == []
    assert calls == [["a"]]


def test_a_negative_z_is_refused() -> None:
    with pytest.raises(ValueError, match="z = -1"):
        adopt_layers({"a": 0.0}, lambda layers: (0.0, 0.0), z=-1.0)
