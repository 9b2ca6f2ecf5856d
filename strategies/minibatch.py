"""Distributed mini-batch SGD: the server averages after every single local SGD step.

Dekel, Gilad-Bachrach, Shamir, Xiao, "Optimal distributed online prediction using mini-batches",
JMLR 13, 2012. Each of m workers computes a gradient on b examples and the gradients are averaged
into one step of mini-batch SGD with m·b examples. Averaging models that took one SGD step from
the same model θ gives θ - η Σ p_k g_k, the same update (p_k ∝ local data size, as FedAvg weights;
equal to the mini-batch average when the clients' partitions are equally large). It is the
communication-heavy baseline: one model exchange per SGD step.

Momentum does not carry across rounds (each round's optimizer is fresh, so its single step is a
plain gradient step) unless ``train.keep_optimizer_state = true``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedbarrier.fl.protocol import LOCAL_STEPS


class MinibatchSGD(FedAvg):
    """FedAvg whose clients take exactly one SGD step per round (Dekel et al. 2012)."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, arrays,
                                       ConfigRecord({**dict(config), LOCAL_STEPS: 1}), grid)
