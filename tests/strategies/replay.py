"""Replaying a client's local training by hand, to check what a simulation recorded."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedbarrier.config import Config
from fedbarrier.data.federation import federation
from fedbarrier.learn.local import local_update
from fedbarrier.runtime.build import initial_model


def replay_round(cfg: Config, pid: int, start: Mapping[str, torch.Tensor], server_round: int,
                 model: nn.Module | None = None) -> nn.Module:
    """Client ``pid``'s training in ``server_round`` from ``start``, with the run's seeds and rates."""
    fed, t = federation(cfg.data, cfg.seed), cfg.train
    net = model if model is not None else initial_model(cfg, fed)
    net.load_state_dict(dict(start))
    data = fed.client_train(pid)
    local_update(net, data.x, data.y, t, run_seed=cfg.seed, client=pid, server_round=server_round,
                 device=torch.device("cpu"))
    return net


def assert_same_model(saved: Mapping[str, torch.Tensor], net: nn.Module) -> None:
    for key, value in net.state_dict().items():
        torch.testing.assert_close(saved[key], value, atol=1e-5, rtol=1e-5)
