"""The learning-rate schedule: hand-computed values of a warm-up, constant and cosine."""

from __future__ import annotations

import math

import pytest

from fedbarrier.learn.local import lr_at


@pytest.mark.parametrize("progress, expected", [(0.0, 0.05), (0.3, 0.05), (1.0, 0.05)])
def test_constant_without_warm_up_is_the_base_rate(progress: float, expected: float) -> None:
    assert lr_at(progress, 0.05, "constant", 0.0) == expected


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_warm_up_rises_linearly_for_either_schedule(schedule: str) -> None:
    """The normalization-free ResNet18 runs of issue 19 need a warm-up at a constant rate
    (the paper's code warms up its ResNet18 too); it used to be ignored unless cosine."""
    assert lr_at(0.05, 0.04, schedule, 0.1) == pytest.approx(0.02)
    assert lr_at(0.0, 0.04, schedule, 0.1) == pytest.approx(0.0, abs=1e-9)


def test_after_the_warm_up_constant_stays_and_cosine_decays_to_zero() -> None:
    assert lr_at(0.5, 0.04, "constant", 0.1) == 0.04
    assert lr_at(0.1, 0.04, "cosine", 0.1) == pytest.approx(0.04)
    assert lr_at(0.55, 0.04, "cosine", 0.1) == pytest.approx(0.04 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(1.0, 0.04, "cosine", 0.1) == pytest.approx(0.0, abs=1e-12)
