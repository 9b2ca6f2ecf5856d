"""Barrier-aware personalization: keep the averaged layers that do not hurt.

Two rules, chosen by ``strategy.barrier_rule``:

``local`` (the default, :class:`LocalBarrierAware`): every client decides for itself. The server
averages every layer (clients upload whole models) and sends the whole average; a client adopts
layers greedily by its *local* barriers on its own training data (``local-train``; never its
local test part): in order of increasing single-layer local barrier, it adds a layer while the
cumulative local barrier of the adopted set is not significantly positive (value <= z * se,
``barriers.z``), and keeps its own weights for the rest (``fedbarrier.measure.adoption``). It
decides again, the same way, when it evaluates the new average. The adopted layers of every client
are recorded per round (``adopted_layers`` in metrics.jsonl).

``server`` (:class:`BarrierAwareFedAvg`, fedbarrier 0.1's rule): after each measurement the
server-side barrier hook hands its record to :meth:`observe`. For the next round, a layer is
shared when its per-layer barrier (``statistic`` over default clients: ``mean`` or ``max``; on
``split`` and ``metric``) is small. Hysteresis keeps the choice from flapping: a shared layer
becomes personal only above ``threshold + margin``, a personal layer becomes shared again only
below ``threshold - margin``. Until the first measurement every layer is shared (plain FedAvg).
The choice of every round is recorded (``shared_layers`` in metrics.jsonl).

This rule follows "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR 2024): layers whose
single-layer barrier is low can be averaged without hurting the federation's models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedbarrier.fl.protocol import ADOPT_BY_BARRIER
from fedbarrier.measure.layers import LayerGroups
from strategies.layerwise import LayerwiseFedAvg


class LocalBarrierAware(FedAvg):
    """FedAvg whose clients adopt the averaged layers by their local barriers (module doc)."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, arrays,
                                       ConfigRecord({**dict(config), ADOPT_BY_BARRIER: True}), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays,
                                          ConfigRecord({**dict(config), ADOPT_BY_BARRIER: True}),
                                          grid)


class BarrierAwareFedAvg(LayerwiseFedAvg):
    """Share layers whose latest per-layer barrier is below a threshold (with hysteresis)."""

    def __init__(self, groups: LayerGroups, *, threshold: float = 0.1, margin: float = 0.02,
                 split: str = "train", metric: str = "loss", statistic: str = "mean",
                 **kwargs: object) -> None:
        super().__init__(groups, shared=list(groups), **kwargs)
        if margin < 0 or statistic not in ("mean", "max"):
            raise ValueError("margin must be >= 0 and statistic 'mean' or 'max'")
        self.threshold, self.margin = threshold, margin
        self.split, self.metric, self.statistic = split, metric, statistic
        self.latest: dict[str, Any] | None = None
        self.history: dict[int, list[str]] = {}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the choices so far and the latest per-layer barriers."""
        latest = None if self.latest is None else {"split": self.latest["split"],
                                                   "per_layer": self.latest["per_layer"]}
        return {"history": {str(r): v for r, v in self.history.items()}, "latest": latest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {int(r): list(v) for r, v in state["history"].items()}
        self.latest = state["latest"]

    def observe(self, record: dict[str, Any]) -> None:
        """Called by the barrier hook with each new measurement record."""
        if record.get("split") == self.split and record.get("per_layer"):
            self.latest = record

    def shared_layers(self, server_round: int) -> list[str]:
        if server_round in self.history:
            return self.history[server_round]
        previous = self.history.get(server_round - 1, list(self.groups))
        if self.latest is None:
            chosen = previous
        else:
            per_layer = self.latest["per_layer"][self.metric]
            chosen = []
            for name in self.groups:
                barrier = per_layer[name][self.statistic]
                limit = self.threshold + self.margin if name in previous \
                    else self.threshold - self.margin
                if barrier is not None and barrier <= limit:
                    chosen.append(name)
        self.history[server_round] = chosen
        return chosen
