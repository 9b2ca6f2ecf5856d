"""Ray resources per client: the GPU share that `simulation.num_gpus = "auto"` resolves to."""

from __future__ import annotations

import pytest

from fedbarrier.config import load_config
from fedbarrier.errors import UserError
from fedbarrier.fl.simulation import GPU_MEMORY_PER_CLIENT, backend_config, client_gpu_share

GIB = 2**30


def share(*overrides, gpus=(80 * GIB,), cpus=16):
    return client_gpu_share(load_config(None, list(overrides)), list(gpus), cpus)


def test_auto_is_the_default_and_gives_no_gpu_without_one():
    assert load_config(None, []).simulation.num_gpus == "auto"
    assert share(gpus=()) == 0.0
    assert share("train.device=cpu") == 0.0


def test_auto_lets_every_client_that_trains_at_once_use_the_gpu():
    assert share("data.num_clients=10") == 0.1  # 16 cores: all 10 at once
    assert share("data.num_clients=100") == 0.0625  # 16 at once
    assert share("data.num_clients=100", "simulation.num_cpus=4") == 0.25  # 4 at once
    assert share("data.num_clients=3") == 0.3333  # Ray's 4 decimals, rounded down
    assert share("data.num_clients=1") == 1.0
    # two GPUs: half the clients on each
    assert share("data.num_clients=10", gpus=(80 * GIB, 80 * GIB)) == 0.2
    # fractional cores counted as Ray counts them: 2 cores hold 20 clients of 0.1 (not 19)
    assert share("data.num_clients=30", "simulation.num_cpus=0.1", cpus=2) == 0.05


def test_auto_caps_clients_per_gpu_by_its_memory():
    assert GPU_MEMORY_PER_CLIENT == 2 * GIB
    assert share("data.num_clients=10", gpus=(8 * GIB,)) == 0.25  # at most 4 per 8 GiB
    assert share("data.num_clients=10", gpus=(1 * GIB,)) == 1.0  # one at a time, never zero


def test_an_explicit_share_is_used_as_given():
    assert share("simulation.num_gpus=0.5") == 0.5
    assert share("simulation.num_gpus=0", gpus=(80 * GIB,)) == 0.0


def test_backend_config_on_this_machine(tmp_path):
    cfg = load_config(None, ["simulation.num_gpus=0.25"])
    assert backend_config(cfg, tmp_path)["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.25}


@pytest.mark.parametrize("value, message", [("half", "use a number or 'auto'"),
                                            ("true", "must be a number or 'auto'"),
                                            ("[1]", "must be a number or 'auto'"),
                                            ("-0.5", "must be >= 0.0"),
                                            ("1.5", "a whole number of GPUs")])
def test_bad_shares_are_refused(value, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [f"simulation.num_gpus={value}"])


def test_simulated_clients_use_the_gpu_ray_assigned():
    from fedbarrier.fl.client_app import client_device_spec

    # Ray renumbers a client's assigned GPU as cuda:0; outside Ray (a SuperNode) cuda:N stands
    assert client_device_spec("cuda:1", in_ray_worker=True) == "cuda"
    assert client_device_spec("cuda:1", in_ray_worker=False) == "cuda:1"
    assert client_device_spec("auto", in_ray_worker=True) == "auto"
    assert client_device_spec("cpu", in_ray_worker=True) == "cpu"


def test_ray_address_comes_from_the_config_else_from_RAY_ADDRESS(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    private = backend_config(load_config(None, []), tmp_path)["init_args"]
    assert "address" not in private and private["num_cpus"] >= 1  # a private instance
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6399")
    joined = backend_config(load_config(None, []), tmp_path)["init_args"]
    # joining a cluster: ray.init refuses num_cpus (the cluster has its own) and a temp dir
    assert joined["address"] == "127.0.0.1:6399"
    assert "num_cpus" not in joined and "_temp_dir" not in joined
    named = load_config(None, ["simulation.ray_address=10.0.0.1:6379"])
    assert backend_config(named, tmp_path)["init_args"]["address"] == "10.0.0.1:6379"
