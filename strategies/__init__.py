"""Aggregation strategies: Flower Message-API strategies, chosen by ``[strategy] name``.

A strategy is a Flower ``Strategy`` (usually a small ``FedAvg`` subclass overriding one or two
hooks, as Flower's own FedProx does). ``build_strategy`` turns the config into one; the barrier
hook is attached around it by ``fedbarrier.fl.adapter.Instrumented``, so every strategy gets
barrier measurement without knowing about it.

Names: ``fedavg``, ``aligned-fedavg`` (weight-matched averaging), ``fedper``, ``lg-fedavg``,
``shallow:K``, ``deep:K``, ``layers`` (with
``[strategy] layers``), ``local``, ``barrier-aware``, ``feddc``, ``periodic``, ``dynamic``,
``radon``, ``minibatch-sgd``, or a plug-in ``package.module:ClassName``
(a file dropped into this folder is ``strategies.<file>:<Class>``). A plug-in class receives
Flower's FedAvg sampling keyword arguments, and ``groups`` (the model's ordered layers) when its
``__init__`` accepts it.
"""

from __future__ import annotations

import importlib
import inspect
import re

from flwr.serverapp.strategy import FedAvg, Strategy

from fedbarrier.config import StrategyConfig
from fedbarrier.errors import UserError
from fedbarrier.measure.layers import LayerGroups, select_layers
from strategies.aligned import AlignedFedAvg
from strategies.barrier_aware import BarrierAwareFedAvg, LocalBarrierAware
from strategies.dynamic import DynamicAveraging
from strategies.feddc import FedDC
from strategies.layerwise import LayerwiseFedAvg, preset_layers
from strategies.minibatch import MinibatchSGD
from strategies.radon import RadonMachine

PRESETS = ("fedavg", "aligned-fedavg", "fedper", "lg-fedavg", "local", "layers", "shallow:K", "deep:K",
           "barrier-aware", "feddc", "periodic", "dynamic", "radon", "minibatch-sgd",
           "package.module:ClassName")
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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


def load_plugin(path: str) -> type:
    """``package.module:ClassName`` -> the class, or a one-line UserError."""
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is bad input
        raise UserError(f"strategy.name = {path!r}: cannot import {module_name!r} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                        ) from None
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise UserError(f"strategy.name = {path!r}: {module_name} has no Flower Strategy class "
                        f"named {class_name!r}")
    return cls


def build_strategy(cfg: StrategyConfig, num_clients: int, groups: LayerGroups) -> Strategy:
    """The strategy named by ``cfg.name`` for a model with these ordered layer groups."""
    name = cfg.name
    kwargs = sampling_kwargs(cfg, num_clients)
    if name == "fedavg":
        return FedAvg(**kwargs)  # type: ignore[arg-type]
    if name == "aligned-fedavg":
        return AlignedFedAvg(**kwargs)
    if name == "barrier-aware" and cfg.barrier_rule == "local":
        return LocalBarrierAware(**kwargs)  # type: ignore[arg-type]
    if name == "barrier-aware":
        return BarrierAwareFedAvg(groups, threshold=cfg.threshold, margin=cfg.margin,
                                  split=cfg.barrier_split, metric=cfg.barrier_metric,
                                  statistic=cfg.barrier_statistic, **kwargs)
    # Schemes of the source material beyond partial sharing (see each module's docstring).
    if name == "feddc":
        return FedDC(groups, daisy_period=cfg.daisy_period,
                     aggregation_period=cfg.aggregation_period, **kwargs)
    if name == "periodic":  # FedDC without daisy-chaining: average every aggregation_period rounds
        return FedDC(groups, daisy_period=0, aggregation_period=cfg.aggregation_period, **kwargs)
    if name == "dynamic":
        return DynamicAveraging(groups, delta=cfg.delta, **kwargs)
    if name == "radon":
        return RadonMachine(groups, height=cfg.radon_height, num_clients=num_clients, **kwargs)
    if name == "minibatch-sgd":
        return MinibatchSGD(**kwargs)  # type: ignore[arg-type]
    if name in ("fedper", "lg-fedavg", "local", "layers") or re.fullmatch(r"(shallow|deep):\d+",
                                                                           name):
        if ":" in name and not 1 <= int(name.partition(":")[2]) <= len(groups):
            raise UserError(f"strategy.name = {name!r}: K must be between 1 and the model's "
                            f"{len(groups)} layers")
        if name == "layers" and not cfg.layers:
            raise UserError("strategy.name = 'layers' needs strategy.layers = [names or regexes]")
        layers = select_layers(groups, cfg.layers) if name == "layers" else ()
        return LayerwiseFedAvg(groups, preset_layers(name, groups, layers=layers), **kwargs)
    if _PLUGIN.match(name):
        cls = load_plugin(name)
        if "groups" in inspect.signature(cls.__init__).parameters:
            return cls(groups=groups, **kwargs)
        return cls(**kwargs)
    raise UserError(f"strategy.name = {name!r} is not allowed; choose one of {', '.join(PRESETS)}")
