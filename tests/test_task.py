"""Local training helpers: the evaluation batch size."""

from __future__ import annotations

import pytest
import torch

from fedbarrier.config import load_config
from fedbarrier.errors import UserError
from fedbarrier.learn.local import AUTO_EVAL_BATCH_VALUES, eval_batch_size, evaluate
from fedbarrier.learn.models import build_model
from fedbarrier.measure.evaluator import ModelEvaluator


@pytest.mark.parametrize(("shape", "expected"), [
    ((3, 32, 32), 128),  # CIFAR
    ((1, 28, 28), 501),  # Fashion-MNIST: 393,216 // 784
    ((1, 8, 8), 6144),  # digits: one batch for every sample it has
    ((3, 512, 512), 1),  # never zero
])
def test_auto_eval_batch_holds_the_budget_of_input_values(shape, expected) -> None:
    assert AUTO_EVAL_BATCH_VALUES == 128 * 3 * 32 * 32
    assert eval_batch_size(0, shape) == expected


def test_a_configured_eval_batch_is_used_as_given() -> None:
    assert eval_batch_size(1000, (3, 32, 32)) == 1000
    assert eval_batch_size(7, (1, 8, 8)) == 7


def test_eval_batch_size_defaults_to_auto_and_rejects_negatives() -> None:
    assert load_config(None, []).train.eval_batch_size == 0
    with pytest.raises(UserError, match="eval_batch_size"):
        load_config(None, ["train.eval_batch_size=-1"])


def test_evaluation_does_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", (3, 32, 32), 10)
    x, y = torch.randn(300, 3, 32, 32), torch.randint(0, 10, (300,))
    one = evaluate(model, x, y, batch_size=300, device=torch.device("cpu"))
    auto = evaluate(model, x, y, batch_size=eval_batch_size(0, (3, 32, 32)),
                    device=torch.device("cpu"))
    assert auto[1] == one[1]
    assert auto[0] == pytest.approx(one[0], rel=1e-5)


def test_both_evaluation_paths_read_zero_as_auto() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", (3, 32, 32), 10)
    x, y = torch.randn(300, 3, 32, 32), torch.randint(0, 10, (300,))
    assert ModelEvaluator(model, x, y, batch_size=0).batch_size == 128
    assert ModelEvaluator(model, x, y, batch_size=50).batch_size == 50
    cpu = torch.device("cpu")
    assert evaluate(model, x, y, batch_size=0, device=cpu) == evaluate(
        model, x, y, batch_size=128, device=cpu)
