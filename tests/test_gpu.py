"""On a CUDA device: the same numbers as on the CPU, the same numbers run after run, and clients
sharing one GPU in a real simulation. Skipped where torch sees no CUDA device (CI has none)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from benchmarks.gpu import PeakGPUMemory
from fedbarrier.config import load_config
from fedbarrier.fl.simulation import run_experiment
from fedbarrier.learn.local import train
from fedbarrier.learn.models import build_model
from fedbarrier.measure.barriers import average_states
from fedbarrier.measure.evaluator import ModelEvaluator
from fedbarrier.measure.layers import layer_groups, model_stages
from fedbarrier.measure.local import local_barriers
from tests.test_evaluator import client_states

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name, shape", [("cnn", (3, 16, 16)), ("resnet18", (3, 16, 16))])
def test_evaluator_on_gpu_matches_cpu(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 5)
    x, y = torch.randn(64, *shape), torch.randint(0, 5, (64,))
    states = client_states(name, shape)
    scores = {dev: ModelEvaluator(build_model(name, shape, 5), x, y, stages=model_stages(model),
                                  device=dev)(states) for dev in ("cpu", "cuda")}
    for cpu, gpu in zip(scores["cpu"], scores["cuda"]):
        # cuDNN may run float32 convolutions in TF32 (10-bit mantissa): about 1e-3 relative
        assert gpu["loss"] == pytest.approx(cpu["loss"], rel=5e-3)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_local_barriers_on_gpu_match_cpu(name):
    """A client measuring on its GPU reports the local barriers (values and se) of the CPU."""
    shape = (3, 16, 16)
    torch.manual_seed(0)
    model = build_model(name, shape, 5)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, *shape, generator=gen), torch.randint(0, 5, (64,), generator=gen)
    states = client_states(name, shape)
    average = average_states(states, [0.5, 0.3, 0.2])
    groups = layer_groups(model, x[:2])
    records = {dev: local_barriers(states[0], average, groups,
                                   ModelEvaluator(model, x, y, stages=model_stages(model),
                                                  device=dev))
               for dev in ("cpu", "cuda")}
    cpu, gpu = records["cpu"], records["cuda"]
    assert gpu["n"] == cpu["n"] == 64 and gpu["layers"] == cpu["layers"]
    # TF32 convolutions (see above); the error moves in steps of 100/64 pp, so allow one flip
    assert gpu["full"]["loss"] == pytest.approx(cpu["full"]["loss"], rel=5e-3, abs=1e-3)
    assert abs(gpu["full"]["error"] - cpu["full"]["error"]) <= 100 / 64 + 1e-9
    assert gpu["full_se"]["loss"] == pytest.approx(cpu["full_se"]["loss"], rel=2e-2, abs=1e-3)
    for layer in cpu["layers"]:
        assert gpu["per_layer"]["loss"][layer] == pytest.approx(
            cpu["per_layer"]["loss"][layer], rel=5e-3, abs=1e-3), layer
    assert gpu["shallow"]["loss"] == pytest.approx(cpu["shallow"]["loss"], rel=5e-3, abs=1e-3)


def trained(name, device):
    torch.manual_seed(0)
    model = build_model(name, (3, 16, 16), 5)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 3, 16, 16, generator=gen), torch.randint(0, 5, (96,), generator=gen)
    stats = train(model, x, y, epochs=2, batch_size=16, lr=lambda step, total: 0.05, momentum=0.9,
                  weight_decay=5e-4, seed=3, device=torch.device(device))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, stats


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_training_on_gpu_gives_the_same_numbers_every_time(name):
    first, a = trained(name, "cuda")
    second, b = trained(name, "cuda")
    assert a.loss == b.loss
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_training_on_gpu_follows_the_cpu():
    gpu, a = trained("cnn", "cuda")
    cpu, b = trained("cnn", "cpu")
    assert a.loss == pytest.approx(b.loss, rel=1e-2)
    for key in cpu:
        assert torch.allclose(gpu[key], cpu[key], rtol=1e-2, atol=1e-3), key


@pytest.mark.slow
def test_clients_share_one_gpu(tmp_path, tiny_overrides):
    """By default (num_gpus = "auto") the clients that train at once share the GPU: here four,
    on a machine with at least four cores, each with a quarter of it; barriers are measured."""
    cfg = load_config(None, [*tiny_overrides, "data.synthetic_shape=[3, 16, 16]",
                             "data.num_clients=4", "data.min_partition_size=10"])
    assert (cfg.simulation.num_gpus, cfg.train.device) == ("auto", "auto")
    torch.cuda.init()
    with PeakGPUMemory() as mem:
        run_experiment(cfg, tmp_path / "run", progress=False)
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    per_gpu = math.ceil(min(4, os.cpu_count() or 1) / torch.cuda.device_count())
    assert run_info["client_num_gpus"] == math.floor(1e4 / per_gpu) / 1e4
    records = [json.loads(line) for line in (tmp_path / "run" / "barriers.jsonl").open()]
    assert [r["round"] for r in records if r["split"] == "test"] == [1, 2]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(m["train_loss"] == m["train_loss"] for m in metrics if m["round"] > 0)  # not NaN
    # Each client process that used the GPU holds its own CUDA context (hundreds of MiB); the
    # server's own allocations here are a few MiB.
    assert mem.peak - mem.start > 4 * 100 * 2**20, (mem.start, mem.peak)
