"""Partial-layer aggregation: each round a strategy names the layers it shares; the rest stay
personal to each client and are never sent, so the server cannot overwrite them.

Protocol (what travels):
- ``configure_train``/``configure_evaluate`` send only the shared layers' arrays, plus the list of
  shared layer names in the config record under ``"shared-layers"``.
- The client overwrites exactly the received tensors and keeps every other tensor from its own
  model (``Context.state``); for a layer it has never trained, the common initialization.
- The client's reply holds its whole model, so that the server can measure barriers between
  local models (instrumentation, as the server's data access is); ``Instrumented`` counts only
  the shared layers as communication (``bytes_received``) and the rest as
  ``bytes_instrumentation``.
- ``aggregate_train`` averages every layer (Flower's FedAvg): that average is the "global model
  when every layer is shared", which the server evaluates on the global test set.

Presets (``[strategy] name``): ``fedper`` (Arivazhagan et al. 2019, personal classifier head),
``lg-fedavg`` (Liang et al. 2020, personal lower layers, shared head), ``shallow:K``, ``deep:K``,
``layers`` (``[strategy] layers = [names or regexes]``), ``local`` (nothing shared).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedbarrier.fl.protocol import SHARED_LAYERS
from fedbarrier.measure.layers import LayerGroups


class LayerwiseFedAvg(FedAvg):
    """FedAvg that shares a chosen set of layers each round (the others stay personal).

    Subclasses override :meth:`shared_layers`; everything else is Flower's FedAvg.
    """

    def __init__(self, groups: LayerGroups, shared: Sequence[str] = (), **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.groups = dict(groups)
        unknown = [name for name in shared if name not in self.groups]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; the model has {list(self.groups)}")
        self._shared = list(shared)

    def shared_layers(self, server_round: int) -> list[str]:
        """Layer names averaged in ``server_round``, in model order."""
        return [name for name in self.groups if name in self._shared]

    def _restrict(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
                  ) -> tuple[ArrayRecord, ConfigRecord]:
        shared = self.shared_layers(server_round)
        keys = [k for name in shared for k in self.groups[name]]
        return (ArrayRecord({k: arrays[k] for k in keys}),
                ConfigRecord({**dict(config), SHARED_LAYERS: shared}))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, *self._restrict(server_round, arrays, config),
                                       grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        # Evaluate the personalized models that the clients will train next round from: the
        # layers shared in this round's aggregation plus each client's own.
        return super().configure_evaluate(
            server_round, *self._restrict(server_round, arrays, config), grid)


def preset_layers(name: str, groups: LayerGroups, *, layers: Sequence[str] = ()) -> list[str]:
    """Shared layers of a preset name (``fedper``, ``lg-fedavg``, ``shallow:K``, ...)."""
    names = list(groups)
    if name == "fedper":
        return names[:-1]
    if name == "lg-fedavg":
        return names[-1:]
    if name == "local":
        return []
    if name == "layers":
        return list(layers)
    kind, _, k = name.partition(":")
    count = int(k)
    return names[:count] if kind == "shallow" else names[len(names) - count:]
