"""Aligned averaging: permute each returned model's hidden units to a reference, then average.

Hidden units of two independently trained networks need not correspond: unit 3 of client A may
play the part of unit 17 of client B, and averaging them mixes unrelated features. Weight matching
(Ainsworth, Hayase, Srinivasa, "Git Re-Basin", ICLR 2023) finds, per hidden layer, the permutation
of B's units that brings B closest to A in L2, without changing what B computes; FedMA (Wang et
al., ICLR 2020) is the federated line of matched averaging. Here each round every returned model
is aligned to the reference (the client with the largest aggregation weight, the first such on
ties) by :func:`fedbarrier.measure.alignment.weight_matching`, then the aligned models are
averaged with Flower's FedAvg aggregation. The round's ``align_seconds`` is in its train metrics
(and so in ``metrics.jsonl``): what the alignment cost on the server.

The permutation spec comes from the model's state dict (a torchvision ResNet's ``layerN.M`` keys:
residual streams share one permutation per stage; otherwise a chain of layers, as the cnn, mlp,
linear and VGG11 models are).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedbarrier.measure.alignment import align_round, spec_from_state
from fedbarrier.seeds import Stream, derive_seed


class AlignedFedAvg(FedAvg):
    """FedAvg over the clients' models aligned (weight matching) to the largest client's."""

    def __init__(self, *, seed: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.seed = seed

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        start = time.perf_counter()
        states = [next(iter(c.array_records.values())).to_torch_state_dict() for c in contents]
        weights = [float(next(iter(c.metric_records.values()))[self.weighted_by_key]) for c in contents]
        aligned = align_round(spec_from_state(states[0]), states, weights, list(range(len(states))),
                              None, reference="largest",
                              seed=derive_seed(self.seed, Stream.ALIGNMENT, server_round))
        records = [RecordDict({self.arrayrecord_key: ArrayRecord(state),
                               "metrics": next(iter(c.metric_records.values()))})
                   for state, c in zip(aligned.states, contents)]
        arrays = aggregate_arrayrecords(records, self.weighted_by_key)
        seconds = time.perf_counter() - start
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        metrics["align_seconds"] = seconds
        return arrays, metrics
