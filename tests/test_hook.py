"""The barrier hook measures the same numbers whether it blocks or works in the background."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from fedbarrier.config import BarrierConfig
from fedbarrier.learn.models import build_model
from fedbarrier.measure.hook import BarrierHook, ClientModels
from fedbarrier.measure.layers import layer_groups, model_stages

SHAPE = (1, 8, 8)


def make_hook(overlap: bool, sample, executor=None) -> BarrierHook:
    model = build_model("cnn", SHAPE, 4)
    cfg = BarrierConfig(n=0, curve_points=3, overlap=overlap)
    return BarrierHook(cfg, model=model, groups=layer_groups(model, torch.zeros(2, *SHAPE)),
                       stages=model_stages(model), sample=sample, write=None, num_rounds=1,
                       seed=0, device=torch.device("cpu"), executor=executor)


@pytest.fixture
def compute():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def client_models() -> ClientModels:
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append({k: v.detach().clone()
                       for k, v in build_model("cnn", SHAPE, 4).state_dict().items()})
    return ClientModels(server_round=1, client_ids=[0, 1, 2], states=states,
                        num_examples=[10, 20, 30], received=None)


def data(split, ids):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return torch.randn(40, *SHAPE, generator=g), torch.randint(0, 4, (40,), generator=g)


def without_seconds(values):
    return {k: v for k, v in values.items() if not k.startswith("barrier_seconds")}


def test_overlap_returns_a_future_of_the_blocking_numbers(compute):
    models = client_models()
    inline = make_hook(True, data).before_aggregation(models)  # no executor: the caller's thread
    blocking = make_hook(False, data, compute).before_aggregation(models)
    future = make_hook(True, data, compute).before_aggregation(models)
    assert isinstance(inline, dict) and isinstance(blocking, dict) and isinstance(future, Future)
    assert without_seconds(future.result(timeout=60)) == without_seconds(blocking)
    assert without_seconds(inline) == without_seconds(blocking)
    assert {"barrier_full_train_loss", "barrier_full_test_error"} <= set(blocking)


def test_listeners_make_the_hook_block(compute):
    """A barrier-aware strategy needs the numbers before it aggregates."""
    hook = make_hook(True, data, compute)
    seen = []
    hook.listeners.append(seen.append)
    assert isinstance(hook.before_aggregation(client_models()), dict)
    assert [r["split"] for r in seen] == ["train", "test"]


def test_a_failed_background_measurement_is_raised_by_its_future(compute):
    def broken(split, ids):
        raise RuntimeError(f"no {split} data")

    future = make_hook(True, broken, compute).before_aggregation(client_models())
    with pytest.raises(RuntimeError, match="no train data"):
        future.result(timeout=60)
