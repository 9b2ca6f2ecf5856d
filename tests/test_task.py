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


def test_crop_flip_by_hand():
    """A 1x2x2 image [[1, 2], [3, 4]] with padding 1: every crop is a 2x2 window of the 4x4
    zero-padded image, then maybe mirrored."""
    from fedbarrier.learn.local import crop_flip

    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))[0, 0]
    crops = [padded[r:r + 2, c:c + 2] for r in range(3) for c in range(3)]
    windows = {tuple(w.flatten().tolist()) for w in crops} | {tuple(w.flip(1).flatten().tolist())
                                                              for w in crops}
    g = torch.Generator().manual_seed(0)
    seen = {tuple(crop_flip(image, g, padding=1)[0, 0].flatten().tolist()) for _ in range(200)}
    assert seen <= windows and len(seen) > 9  # every result is a (mirrored) window; many occur
    assert (2.0, 1.0, 4.0, 3.0) in seen and (0.0, 0.0, 0.0, 1.0) in seen  # a mirror, a corner crop
    # no padding: each image is itself or its mirror, per image in the batch
    batch = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = crop_flip(batch, torch.Generator().manual_seed(1), padding=0)
    for i in range(2):
        assert torch.equal(out[i], batch[i]) or torch.equal(out[i], batch[i].flip(-1))


def test_crop_flip_is_seeded_and_leaves_the_data_order_alone():
    from fedbarrier.learn.local import crop_flip, train

    x = torch.randn(8, 3, 8, 8)
    a = crop_flip(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, crop_flip(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, crop_flip(x, torch.Generator().manual_seed(6)))

    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 8 * 8, 2)

        def forward(self, batch):
            seen.append(batch.detach().clone())
            return self.fc(batch.flatten(1))

    y = torch.randint(0, 2, (8,))
    common = dict(epochs=1, batch_size=4, lr=lambda s, t: 0.0, momentum=0.0, weight_decay=0.0,
                  seed=3, device=torch.device("cpu"))
    train(Spy(), x, y, **common)
    plain = list(seen)
    seen.clear()
    train(Spy(), x, y, augment=lambda b, g: b.flip(-1), **common)
    assert all(torch.equal(p.flip(-1), q) for p, q in zip(plain, seen))  # same order, augmented
