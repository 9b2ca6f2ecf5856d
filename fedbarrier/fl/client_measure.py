"""What a client measures on its own data: local barriers, and barrier-aware adoption.

No Flower here: the client app calls these with its own model θ_k (from its store), the round's
average θ̄ (what the server sent) and its config. The math is :mod:`fedbarrier.measure.local` and
:mod:`fedbarrier.measure.adoption`; this module builds the client's sample, model and evaluator.
Only the returned numbers leave the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from fedbarrier.config import LOCAL_SPLITS, Config
from fedbarrier.data.federation import client_sample, federation
from fedbarrier.measure.adoption import Adoption, adopt_layers
from fedbarrier.measure.barriers import mix_layers, score_variants, standard_error
from fedbarrier.measure.evaluator import ModelEvaluator
from fedbarrier.measure.layers import LayerGroups, Stage, model_stages
from fedbarrier.measure.local import local_barriers
from fedbarrier.runtime.build import initial_model, model_layers

StateDict = Mapping[str, torch.Tensor]
ADOPTION_METRIC = "loss"  # adoption decides on the loss: the error moves in steps of 100/n pp


def local_splits(cfg: Config) -> tuple[str, ...]:
    """The local splits this run measures (none when barriers are off)."""
    if not cfg.barriers.enabled:
        return ()
    return tuple(s for s in cfg.barriers.splits if s in LOCAL_SPLITS)


@lru_cache(maxsize=2)
def _measuring_model(cfg: Config) -> tuple[nn.Module, LayerGroups, list[Stage]]:
    """One module per process whose tensors the evaluator swaps, its layers and stages."""
    model = initial_model(cfg, federation(cfg.data, cfg.seed))
    return model, model_layers(cfg), model_stages(model)


def _evaluator(cfg: Config, x: torch.Tensor, y: torch.Tensor,
               device: torch.device) -> ModelEvaluator:
    model, _, stages = _measuring_model(cfg)
    return ModelEvaluator(model, x, y, stages=stages,
                          share_activations=cfg.barriers.share_activations,
                          batch_size=cfg.train.eval_batch_size or 1000, device=device)


def local_report(cfg: Config, client: int, own: StateDict | None, average: StateDict,
                 split: str, device: torch.device) -> dict[str, Any]:
    """Client ``client``'s local barriers on ``split`` (BARRIERS.md v2), or why it has none."""
    if own is None:
        return {"skipped": "the client has no model of this round"}
    x, y = client_sample(federation(cfg.data, cfg.seed), client, split, cfg.barriers.local_n,
                         cfg.seed)
    if len(y) < 2:
        return {"skipped": f"{len(y)} examples in {split} (at least 2 are needed)"}
    _, groups, _ = _measuring_model(cfg)
    families = [f for f in ("full", "per_layer", "cumulative") if f in cfg.barriers.families]
    record = local_barriers(own, average, groups, _evaluator(cfg, x, y, device),
                            families=families)
    record.pop("evaluated", None)  # the values above say it; keep the message small
    return record


def adoption(cfg: Config, client: int, own: StateDict | None, average: StateDict,
             device: torch.device) -> Adoption:
    """Which layers of ``average`` the client adopts (:func:`adopt_layers`), decided on its
    training data alone (``local-train``, never its local test part). Without a model of its
    own yet (its first round) it adopts every layer."""
    _, groups, _ = _measuring_model(cfg)
    layers = list(groups)
    x, y = client_sample(federation(cfg.data, cfg.seed), client, "local-train",
                         cfg.barriers.local_n, cfg.seed)
    if own is None or len(y) < 2:
        return Adoption(layers=layers, order=layers, cumulative=[])
    evaluator = _evaluator(cfg, x, y, device)
    single = local_barriers(own, average, groups, evaluator, families=["per_layer"],
                            metrics=[ADOPTION_METRIC])["per_layer"][ADOPTION_METRIC]

    def measure_set(layer_set: Sequence[str]) -> tuple[float, float]:
        variants = {"endpoint": own, "set": mix_layers(own, average, groups, list(layer_set))}
        values, examples, _ = score_variants(variants, evaluator, [ADOPTION_METRIC])
        delta = examples["set"][ADOPTION_METRIC] - examples["endpoint"][ADOPTION_METRIC]
        value = values["set"][ADOPTION_METRIC] - values["endpoint"][ADOPTION_METRIC]
        return value, standard_error(delta) or 0.0

    return adopt_layers(single, measure_set, cfg.barriers.z)


def adopted_keys(cfg: Config, layers: Sequence[str]) -> set[str]:
    """The state-dict keys of ``layers``."""
    _, groups, _ = _measuring_model(cfg)
    return {key for layer in layers for key in groups[layer]}
