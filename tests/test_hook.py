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


def test_aligned_barriers_vanish_between_a_model_and_its_permuted_copy():
    """B is A with its hidden units permuted (the same function): unaligned, averaging A and B
    mixes unrelated units; aligned, B becomes A and every barrier is exactly 0."""
    from fedbarrier.measure.alignment import apply_permutation, permutation_spec

    model = build_model("cnn", SHAPE, 4)
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    spec = permutation_spec("cnn", a)
    g = torch.Generator().manual_seed(3)
    b = apply_permutation(spec, {n: torch.randperm(size, generator=g) for n, size in spec.sizes.items()}, a)
    records = []
    cfg = BarrierConfig(n=0, curve_points=3, align="weight-matching", splits=("test",))
    hook = BarrierHook(cfg, model=model, groups=layer_groups(model, torch.zeros(2, *SHAPE)),
                       stages=model_stages(model), sample=data, write=records.append, num_rounds=1,
                       seed=0, device=torch.device("cpu"), spec=spec)
    values = hook.before_aggregation(ClientModels(server_round=1, client_ids=[4, 9], states=[a, b],
                                                  num_examples=[30, 10], received=None))
    [rec] = records
    assert rec["aligned"]["aligned_to"] == 4  # the largest weight
    # unaligned, the two are far apart and averaging them changes the function
    assert rec["distances"]["model"]["pairwise_l2"] > 1.0 and abs(rec["full"]["loss"]) > 1e-3
    for metric in ("loss", "error"):
        assert rec["aligned"]["full"][metric] == pytest.approx(0.0, abs=1e-6)
        for summary in rec["aligned"]["per_layer"][metric].values():
            assert summary["mean"] == pytest.approx(0.0, abs=1e-6)
    assert rec["aligned"]["distances"]["model"]["pairwise_l2"] == pytest.approx(0.0, abs=1e-6)
    assert values["barrier_full_aligned_test_loss"] == rec["aligned"]["full"]["loss"]
    assert values["barrier_seconds_align"] > 0
    assert "endpoint" not in rec["aligned"]  # the endpoints are the record's: functions are kept
