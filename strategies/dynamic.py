"""Dynamic averaging: synchronize only when some client's model has drifted too far.

Kamp, Adilova, Sicking, Hüger, Schlicht, Wirtz, Wrobel, "Efficient decentralized deep learning by
dynamic model averaging", ECML PKDD 2018. Every learner keeps the last synchronized model as its
reference r and checks a local condition, ||θ_k - r||² <= Δ. While every learner satisfies it,
nothing but the check is communicated; when one violates it, the models are averaged and the
average becomes the new reference. (This implements the full synchronization; the paper's
balancing, which first averages a subset of the learners, is not.) Δ = 0 is FedAvg, Δ = ∞ is
local training after the first round.

Protocol (what travels):

- Train messages carry the config flag ``divergence``. After a synchronization (and in round 1)
  they carry the new reference whole, with every layer named in ``shared-layers``; the client
  stores it as its reference and trains from it. Otherwise they carry no arrays and an empty
  ``shared-layers``: the client trains its own model (the personal-layer mechanism).
- The client reports ``divergence`` = ||θ_k - r||² after training (``client_app.squared_distance``).
  Its whole model in the reply is instrumentation (barriers), counted as communication only in
  rounds whose train messages carried the reference.
- The server synchronizes after round t when some divergence exceeds Δ (:func:`should_sync`):
  the average it returns becomes the reference of round t + 1.

Recorded per round: ``synced`` (1 when the round ended in a synchronization), ``divergence``
(example-weighted mean) and ``divergence_max``; ``bytes_sent``/``bytes_received`` count the
reference going out and the models coming back in the round after each synchronization.
``aggregate_train`` returns the average of the returned models every round (the global model on
the global test set); clients evaluate the new reference after a synchronization and their own
model otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedbarrier.fl.protocol import DIVERGENCE
from fedbarrier.measure.layers import LayerGroups
from strategies.feddc import whole_or_nothing


def should_sync(divergences: Sequence[float], delta: float) -> bool:
    """True when some client violates its local condition ||θ_k - r||² <= Δ."""
    return any(d > delta for d in divergences)


class DynamicAveraging(FedAvg):
    """Average only when some client's squared distance to the reference exceeds ``delta``."""

    def __init__(self, groups: LayerGroups, *, delta: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        self.groups, self.delta = dict(groups), delta
        self.synced: dict[int, bool] = {0: True}  # round -> ended in a synchronization

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        reference = arrays if self.synced.get(server_round - 1, True) else None
        payload, cfg = whole_or_nothing(reference, config, self.groups)
        return super().configure_train(server_round, payload,
                                       ConfigRecord({**dict(cfg), DIVERGENCE: True}), grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [m for m in replies if not m.has_error()]
        divergences = [float(next(iter(m.content.metric_records.values()))[DIVERGENCE])
                       for m in replies]
        arrays, metrics = super().aggregate_train(server_round, replies)
        sync = should_sync(divergences, self.delta)
        self.synced[server_round] = sync
        info = {"synced": int(sync), "divergence_max": max(divergences, default=0.0)}
        return arrays, MetricRecord({**(dict(metrics) if metrics is not None else {}), **info})

    def sends_average(self, server_round: int) -> bool:
        """Clients hold the average only after a synchronization (local barriers are measured
        then)."""
        return self.synced.get(server_round, True)

    def state_dict(self) -> dict[str, dict[str, bool]]:
        """For ``fedbarrier run --resume``: which rounds ended in a synchronization (the clients
        keep their references themselves)."""
        return {"synced": {str(r): sync for r, sync in self.synced.items()}}

    def load_state_dict(self, state: dict[str, dict[str, bool]]) -> None:
        self.synced = {int(r): bool(sync) for r, sync in state["synced"].items()}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        reference = arrays if self.synced.get(server_round, True) else None
        return super().configure_evaluate(server_round,
                                          *whole_or_nothing(reference, config, self.groups), grid)
