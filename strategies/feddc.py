"""FedDC, federated daisy-chaining: pass models from client to client between averagings.

Kamp, Fischer, Vreeken, "Federated Learning from Small Datasets", ICLR 2023 (Algorithm 1). With a
handful of examples per client, a model trained locally between averagings sees too little data;
FedDC passes each client's model on to another client every ``daisy_period`` rounds (a random
permutation), so that every model trains on several clients' data, and averages every
``aggregation_period`` rounds. ``daisy_period = 0`` never daisy-chains: periodic averaging.

Protocol (what travels), after round t:

- t a multiple of ``aggregation_period``: every client gets the average of the returned models;
- else t a multiple of ``daisy_period``: a permutation π of the clients that returned a model
  in round t; client π(i) gets client i's model (drawn from Python's ``random``, which Flower's
  client sampling also uses and ``Instrumented`` seeds per round from the run seed);
- else: every client continues from its own model, and the server sends nothing.

A client that gets a model receives it whole with every layer named in ``shared-layers``, so it
keeps the trained result as its own; a client that gets nothing receives an empty
``shared-layers`` and trains its own model (the personal-layer mechanism of client_app). The
server keeps the models returned in round t (by partition id) for the hand-over.

Recorded per round (metrics.jsonl): ``feddc_step``, what follows the round (0 keep, 1 daisy
chain, 2 average), and ``feddc_model_from``, for each client in ``clients`` order (by partition
id) the client whose round t-1 model it trained in round t (its own id when it kept its model,
-1 for the initial model or an average). ``aggregate_train`` returns the average of the returned
models every round (the global model on the global test set). Clients evaluate the average after
an averaging round and their own model otherwise.

The paper has every client train in every round; with partial participation a sampled client
without an assigned model (it did not train in round t) gets the latest average. A resumed run
(``fedbarrier run --resume``) follows the schedule from the round number and hands over the
models saved with the round's state (a state saved by fedbarrier before it saved them resumes a
daisy step as a keep step).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedbarrier.fl.protocol import CLIENT_RECORD, PARTITION_ID, SHARED_LAYERS
from fedbarrier.measure.layers import LayerGroups

KEEP, DAISY, AVERAGE = 0, 1, 2  # feddc_step codes
COMMON = -1  # feddc_model_from: the initial model or an average


def feddc_step(server_round: int, daisy_period: int, aggregation_period: int) -> int:
    """What FedDC does after ``server_round``: AVERAGE, DAISY or KEEP (averaging wins a tie)."""
    if server_round % aggregation_period == 0:
        return AVERAGE
    if daisy_period and server_round % daisy_period == 0:
        return DAISY
    return KEEP


def daisy_chain(clients: Sequence[int], rng: random.Random) -> dict[int, int]:
    """``{recipient: source}``: client ``clients[i]`` hands its model to ``clients[π(i)]``."""
    recipients = list(clients)
    rng.shuffle(recipients)
    return {recipient: source for source, recipient in zip(clients, recipients)}


def whole_or_nothing(arrays: ArrayRecord | None, config: ConfigRecord, groups: LayerGroups
                     ) -> tuple[ArrayRecord, ConfigRecord]:
    """A message payload for a client that keeps its own model between rounds: ``arrays`` whole
    (it replaces the client's model) or, for None, nothing (it continues from its own)."""
    layers = list(groups) if arrays is not None else []
    return (arrays if arrays is not None else ArrayRecord(),
            ConfigRecord({**dict(config), SHARED_LAYERS: layers}))


def reply_pid(msg: Message) -> int:
    """The partition id a client reports in its reply."""
    return int(msg.content.config_records[CLIENT_RECORD][PARTITION_ID])


class FedDC(FedAvg):
    """Federated daisy-chaining (Kamp et al., ICLR 2023); see the module docstring."""

    def __init__(self, groups: LayerGroups, *, daisy_period: int = 1, aggregation_period: int = 10,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if daisy_period < 0 or aggregation_period < 1:
            raise ValueError("daisy_period must be >= 0 and aggregation_period >= 1")
        self.groups = dict(groups)
        self.daisy_period, self.aggregation_period = daisy_period, aggregation_period
        self.history: dict[int, dict[int, int]] = {}  # round -> {client: whose model it trained}
        self._step = AVERAGE  # after round 0: everyone starts from the initial model
        self._handover: dict[int, tuple[int, ArrayRecord]] = {}  # recipient -> (source, model)
        self._pid_of: dict[int, int] = {}  # node id -> partition id, learnt from replies
        self._source_of: dict[int, int | None] = {}  # node id -> whose model it trains (None: own)
        self._round = 0  # the last aggregated round

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        sampled = super().configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)
        messages, self._source_of = [], {}
        for msg in sampled:
            node = msg.metadata.dst_node_id
            # After a resume no reply has told us who a node is yet; Instrumented's grid knows.
            pid = self._pid_of.get(node, getattr(grid, "partition_id", lambda _: None)(node))
            model: ArrayRecord | None = arrays
            source: int | None = COMMON
            if self._step == KEEP:
                model, source = None, None  # None: its own model
            elif self._step == DAISY and pid in self._handover:
                source, model = self._handover[pid]
            self._source_of[node] = source
            payload, cfg = whole_or_nothing(model, msg.content[self.configrecord_key], self.groups)
            content = RecordDict({self.arrayrecord_key: payload, self.configrecord_key: cfg})
            messages.append(Message(content=content, dst_node_id=node,
                                    message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = sorted((m for m in replies if not m.has_error()), key=reply_pid)
        models, held = {}, {}
        for msg in replies:  # copied before FedAvg reads the replies
            node, pid = msg.metadata.src_node_id, reply_pid(msg)
            self._pid_of[node] = pid
            models[pid] = ArrayRecord(dict(next(iter(msg.content.array_records.values()))))
            source = self._source_of.get(node, COMMON)
            held[pid] = pid if source is None else source
        self.history[server_round] = held
        arrays, metrics = super().aggregate_train(server_round, replies)
        self._round = server_round
        self._step = feddc_step(server_round, self.daisy_period, self.aggregation_period)
        self._handover = {}
        if self._step == DAISY:
            chain = daisy_chain(sorted(models), random.Random(random.getrandbits(64)))
            self._handover = {recipient: (source, models[source]) for recipient, source in chain.items()}
        info = {"feddc_step": self._step, "feddc_model_from": [held[pid] for pid in sorted(held)]}
        return arrays, MetricRecord({**(dict(metrics) if metrics is not None else {}), **info})

    def sends_average(self, server_round: int) -> bool:
        """Clients hold the average only after an averaging round (local barriers are measured
        then; keep and daisy steps have none)."""
        return feddc_step(server_round, self.daisy_period, self.aggregation_period) == AVERAGE

    def state_dict(self) -> dict[str, Any]:
        """For ``fedbarrier run --resume``: the last round (the schedule follows from it) and the
        models to hand over in the next round (``{recipient: {"source", "model"}}``)."""
        handover = {str(recipient): {"source": source, "model": model.to_torch_state_dict()}
                    for recipient, (source, model) in self._handover.items()}
        return {"round": self._round, **({"handover": handover} if handover else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume after ``state["round"]``. Without saved hand-over models (a state saved before
        fedbarrier saved them) a resumed daisy step lets every client keep its own model."""
        self._round = int(state["round"])
        step = feddc_step(self._round, self.daisy_period, self.aggregation_period) if self._round \
            else AVERAGE
        self._handover = {int(recipient): (int(h["source"]), ArrayRecord(h["model"]))
                          for recipient, h in state.get("handover", {}).items()}
        self._step = KEEP if step == DAISY and not self._handover else step

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        # The model each client holds now: the average after an averaging round, else its own.
        model = arrays if self._step == AVERAGE else None
        return super().configure_evaluate(server_round, *whole_or_nothing(model, config, self.groups),
                                          grid)
