"""Aggregation strategies: Flower Message-API strategies, chosen by ``[strategy] name``.

A strategy here is a Flower ``Strategy`` (usually a small ``FedAvg`` subclass overriding one or
two hooks, as Flower's own FedProx does). ``build_strategy`` turns the config into one; the
barrier hook is attached around it by ``fedbarrier.instrumented.Instrumented``, so every strategy
gets barrier measurement without knowing about it.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import FedAvg, Strategy

from fedbarrier.config import StrategyConfig
from fedbarrier.errors import UserError

StrategyFactory = Callable[..., Strategy]


def _fedavg(**kwargs: object) -> Strategy:
    return FedAvg(**kwargs)  # type: ignore[arg-type]


REGISTRY: dict[str, StrategyFactory] = {"fedavg": _fedavg}


def sampling_kwargs(cfg: StrategyConfig, num_clients: int) -> dict[str, object]:
    """Flower's sampling arguments from ours (an exact count wins over a fraction)."""
    if cfg.clients_per_round:
        per_round = cfg.clients_per_round
        fraction = per_round / num_clients
    else:
        fraction = cfg.fraction_train
        per_round = max(1, int(num_clients * fraction))
    evaluate = max(1, int(num_clients * cfg.fraction_evaluate)) if cfg.fraction_evaluate else 0
    return {
        "fraction_train": fraction,
        "min_train_nodes": per_round,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_evaluate_nodes": evaluate,
        "min_available_nodes": num_clients,
    }


def build_strategy(cfg: StrategyConfig, num_clients: int) -> Strategy:
    """The strategy named by ``cfg.name``, sampling as configured."""
    if cfg.name not in REGISTRY:
        raise UserError(f"strategy.name = {cfg.name!r} is not allowed; choose one of "
                        f"{', '.join(sorted(REGISTRY))}")
    return REGISTRY[cfg.name](**sampling_kwargs(cfg, num_clients))
