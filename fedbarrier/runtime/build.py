"""What every process builds the same way from a config: the initial model and its layers.

The server and each client call these independently and get identical results, because every
random draw is seeded from the config's seed.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from fedbarrier.config import Config, ModelConfig
from fedbarrier.data.federation import Federation, federation
from fedbarrier.learn.models import build_model
from fedbarrier.measure.layers import LayerGroups, layer_groups
from fedbarrier.seeds import Stream, derive_seed


def initial_model(cfg: Config, fed: Federation, client: int | None = None) -> nn.Module:
    """The common initialization (``client=None``) or a client's own one (``train.client_init``)."""
    parts = (cfg.seed, Stream.INIT) if client is None else (cfg.seed, Stream.INIT, client)
    torch.manual_seed(derive_seed(*parts))
    return model_of(cfg.model, fed.input_shape, fed.num_classes)


def model_of(cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The ``[model]`` section's model for this input shape and class count (torch's RNG)."""
    return build_model(cfg.name, shape, num_classes, width=cfg.width or None,
                       classifier_width=cfg.classifier_width or None)


@lru_cache(maxsize=8)
def initial_state(cfg: Config, client: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict of :func:`initial_model` (cached; callers must not modify it)."""
    model = initial_model(cfg, federation(cfg.data, cfg.seed), client)
    return {k: v.detach() for k, v in model.state_dict().items()}


def model_layers(cfg: Config) -> LayerGroups:
    """The model's ordered layers (BARRIERS.md), found by one forward pass on two test images."""
    fed = federation(cfg.data, cfg.seed)
    return layer_groups(initial_model(cfg, fed), fed.splits.test.x[:2])
