"""The Flower edge of the round pipeline: any Message-API strategy, instrumented.

``Instrumented(FedAvg(...), hooks=[BarrierHook(...)])`` is itself a Flower ``Strategy``; run it
with ``instrumented.start(grid=..., initial_arrays=..., num_rounds=...)`` like any other: it
wires its own round-end step into Flower's ``evaluate_fn``, so every round's record is written
without the caller knowing how. What it does beyond the inner strategy:

- decodes every message's arrays once (:func:`decode`), builds :class:`~fedbarrier.fl.round.Reply`
  objects and runs the :class:`~fedbarrier.fl.round.RoundPipeline` (checks, bytes, hooks, record);
- determinism: hands the inner strategy a grid whose node ids are ordered by partition id, seeds
  Python's ``random`` (which Flower's ``sample_nodes`` uses) per round and phase, and sorts replies
  by partition id, so sampling and floating-point sums happen in one order run after run;
- starts the server's evaluation of a round's model in ``configure_evaluate``, so a
  ``global_evaluate`` that returns a ``Future`` overlaps the clients' evaluation;
- local barriers: in a measured round, every client that trained is asked in the evaluation
  phase to measure its model against the round's average θ̄ (a message of its own for clients the
  strategy did not sample for evaluation); layers of θ̄ that the evaluation message does not
  carry travel in an extra record, counted as instrumentation bytes;
- resuming after ``completed_rounds``: Flower's loop counts from 1 again; the offset is added here.

It never changes what the inner strategy aggregates.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedbarrier.fl.protocol import (
    ADOPTED_LAYERS,
    ALIGNED_AVERAGE,
    AVERAGE,
    CLIENT_RECORD,
    LOCAL_BARRIERS,
    LOCAL_ONLY,
    LOCAL_RECORD,
    PARTITION_ID,
    PERMUTATION,
    SERVER_ROUND,
    SHARED_LAYERS,
    AverageSchedule,
)
from fedbarrier.fl.round import LocalPlan, Reply, RoundHook, RoundPipeline
from fedbarrier.runtime.stopping import raise_if_stop_requested
from fedbarrier.seeds import sampling_seed

StateDict = dict[str, torch.Tensor]
#: Evaluates a round's global model on the server: the metrics, or a Future of them.
GlobalEvaluate = Callable[[int, StateDict], "Mapping[str, float] | Future[Mapping[str, float]]"]

TRAIN_PHASE, EVALUATE_PHASE = 0, 1  # the phase part of the per-round sampling seed


class OrderedGrid:
    """A view of a Grid whose ``get_node_ids`` lists nodes by partition id (unknown nodes by
    their node id)."""

    def __init__(self, grid: Grid, partition_of: Mapping[int, int],
                 nodes: Sequence[int] | None = None) -> None:
        self._grid = grid
        self._partition_of = partition_of
        self._nodes = nodes  # already ordered, for a grid whose nodes never change

    def get_node_ids(self) -> list[int]:
        if self._nodes is not None:
            return list(self._nodes)
        return sorted(self._grid.get_node_ids(), key=lambda n: self._partition_of.get(n, n))

    def partition_id(self, node_id: int) -> int | None:
        """The partition (client) id of a node (None if unknown): strategies that keep
        per-client state across a resume (node ids are new then) look clients up here."""
        return self._partition_of.get(node_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class StoppableGrid:
    """A grid whose ``send_and_receive`` gives up its wait for replies when the run is asked to
    stop (:mod:`fedbarrier.runtime.stopping`), raising ``RunInterrupted``: the round in progress
    is dropped before anything of it is recorded. Otherwise Flower's own loop: push, then pull
    every ``pull_interval`` seconds until all replies are in or ``timeout`` passes."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        raise_if_stop_requested()
        waiting = set(self._grid.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < end:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            raise_if_stop_requested()
            time.sleep(getattr(self._grid, "pull_interval", 0.1))
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def decode(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The record's tensors. The pipeline decodes each reply and each sent model once per round
    and hands the tensors to every check and hook; the inner Flower strategy reads its own copy
    from the messages (Flower's aggregation parses the arrays itself; caching the decoded values
    on the ``Array`` objects would travel with them to the clients' processes)."""
    return dict(record.to_torch_state_dict())


def _differing(average: StateDict, sent: StateDict) -> dict[str, torch.Tensor]:
    """The tensors of ``average`` that ``sent`` lacks or holds otherwise (beyond the float
    rounding of another summation order)."""
    return {k: v for k, v in average.items()
            if k not in sent or sent[k].shape != v.shape
            or not torch.allclose(sent[k].to(v.dtype), v, rtol=1e-5, atol=1e-6)}


def array_bytes(messages: Iterable[Message], keys: set[str] | None = None) -> int:
    """Bytes of the arrays in ``messages`` (only those named in ``keys``, if given)."""
    return sum(_record_bytes(msg, keys) for msg in messages)


def _record_bytes(msg: Message, keys: set[str] | None = None) -> int:
    if not msg.has_content():
        return 0
    return sum(len(arr.data) for record in msg.content.array_records.values()
               for k, arr in record.items() if keys is None or k in keys)


def _sent_layers(messages: list[Message]) -> tuple[set[str], list[str] | None]:
    """(array keys sent, shared layer names) of one round's training messages."""
    if not messages:
        return set(), None
    content = messages[0].content
    keys = {k for record in content.array_records.values() for k in record}
    for record in content.config_records.values():
        if SHARED_LAYERS in record:
            return keys, [str(x) for x in record[SHARED_LAYERS]]
    return keys, None


def error_summary(reason: str) -> str:
    """The one informative line of a client error (Ray wraps it in a long traceback)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason or "")
    messages = re.findall(r"Message: (.+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary = messages[-1] if messages else (lines[-1] if lines else "unknown error")
    return summary.strip(" '>")[:200]


class Instrumented(Strategy):
    """A Flower strategy that runs ``inner`` through the round pipeline (see module doc)."""

    def __init__(
        self,
        inner: Strategy,
        hooks: Sequence[RoundHook] = (),
        *,
        seed: int = 0,
        partition_of: Mapping[int, int] | None = None,
        global_evaluate: GlobalEvaluate | None = None,
        min_clients: int = 1,
        completed_rounds: int = 0,
        save_state: Callable[[int, StateDict], None] | None = None,
        local: LocalPlan | None = None,
        static_nodes: bool = False,
    ) -> None:
        """``static_nodes``: the grid's nodes never change during the run (Flower's simulation
        engine registers them all at start, never to expire): they are listed and ordered once,
        not on every sampling (0.15 s each at 100,000 nodes)."""
        self.inner = inner
        self.static_nodes = static_nodes
        self._nodes: list[int] | None = None
        self.pipeline = RoundPipeline(hooks, min_clients=min_clients, local=local)
        self.seed = seed
        self.offset = completed_rounds
        self.save_state = save_state
        self.partition_of = dict(partition_of or {})
        self.global_evaluate = global_evaluate
        self._sent_keys: set[str] = set()
        self._global_state: tuple[ArrayRecord, StateDict] | None = None  # the last decoded model
        self._caller_evaluate: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
        self._trained: dict[int, int] = {}  # client id -> node id, this round's usable replies
        self._local_only: set[int] = set()  # nodes asked for local barriers alone
        # (round, arrays, metrics or Future): the global evaluation started in configure_evaluate
        self._global: tuple[int, ArrayRecord, Any] | None = None

    @property
    def hooks(self) -> list[RoundHook]:
        return self.pipeline.hooks

    # -- helpers --------------------------------------------------------------------------------
    def _pid(self, node_id: int) -> int:
        return self.partition_of.get(node_id, node_id)

    def _grid(self, grid: Grid) -> Grid:
        if not self.static_nodes:
            return OrderedGrid(grid, self.partition_of)  # type: ignore[return-value]
        if self._nodes is None:
            self._nodes = OrderedGrid(grid, self.partition_of).get_node_ids()
        return OrderedGrid(grid, self.partition_of, self._nodes)  # type: ignore[return-value]

    def _sorted(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda m: (m.has_error(), self._pid(m.metadata.src_node_id)))

    def _state(self, arrays: ArrayRecord) -> StateDict:
        """The global model's tensors, decoded once: the round's end (evaluation, saved state)
        and the next round's start get the same ArrayRecord from Flower."""
        if self._global_state is None or self._global_state[0] is not arrays:
            self._global_state = (arrays, decode(arrays))
        return self._global_state[1]

    def _reply(self, msg: Message, *, with_state: bool) -> Reply:
        client = self._pid(msg.metadata.src_node_id)
        if msg.has_error():
            return Reply(client=client, error=error_summary(msg.error.reason), array_records=0)
        content = msg.content
        if CLIENT_RECORD in content.config_records:  # the id the client reports wins
            client = int(content.config_records[CLIENT_RECORD][PARTITION_ID])
        metrics = dict(next(iter(content.metric_records.values()), {}))
        records = list(content.array_records.values())
        state = decode(records[0]) if with_state and len(records) == 1 else None
        adopted = None
        if CLIENT_RECORD in content.config_records \
                and ADOPTED_LAYERS in content.config_records[CLIENT_RECORD]:
            adopted = [str(x) for x in content.config_records[CLIENT_RECORD][ADOPTED_LAYERS]]
        local = None
        if LOCAL_RECORD in content.config_records:
            local = {split: json.loads(str(text))
                     for split, text in content.config_records[LOCAL_RECORD].items()}
        return Reply(client=client, metrics=metrics, state=state, array_records=len(records),
                     nbytes=_record_bytes(msg), nbytes_shared=_record_bytes(msg, self._sent_keys),
                     adopted=adopted, local=local)

    # -- Strategy -------------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
              ) -> Result:
        """Flower's loop, with this strategy's round end as ``evaluate_fn`` (which Flower calls
        last in every round). A caller's own ``evaluate_fn`` still runs, first, and its metrics
        join the round's record."""
        self._caller_evaluate = evaluate_fn
        return super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                             evaluate_config, evaluate_fn=self._round_end)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        random.seed(sampling_seed(self.seed, server_round, TRAIN_PHASE))
        messages = list(self.inner.configure_train(server_round, arrays, ConfigRecord(dict(config)),
                                                   self._grid(grid)))
        received = self._state(arrays)
        self._sent_keys, shared = _sent_layers(messages)
        decoded: dict[int, StateDict] = {id(arrays): received}  # each distinct record once
        sent_to: dict[int, StateDict] = {}
        for msg in messages:
            records = msg.content.array_records if msg.has_content() else {}
            if records:
                record = next(iter(records.values()))
                if id(record) not in decoded:
                    decoded[id(record)] = decode(record)
                sent_to[self._pid(msg.metadata.dst_node_id)] = decoded[id(record)]
        self.pipeline.begin(server_round, received, bytes_sent=array_bytes(messages),
                            shared_layers=shared, sent_to=sent_to)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        messages = self._sorted(replies)
        usable = self.pipeline.train_replies([self._reply(m, with_state=True) for m in messages])
        self._trained = {self.pipeline.record.clients[j]: messages[i].metadata.src_node_id
                         for j, i in enumerate(usable)}
        arrays, metrics = self.inner.aggregate_train(server_round, [messages[i] for i in usable])
        self.pipeline.train_metrics(metrics)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        random.seed(sampling_seed(self.seed, server_round, EVALUATE_PHASE))
        messages = list(self.inner.configure_evaluate(server_round, arrays,
                                                      ConfigRecord(dict(config)), self._grid(grid)))
        self.pipeline.evaluate_sent(array_bytes(messages))
        self._local_only = set()
        if self.pipeline.local_round():
            messages = self._ask_local_barriers(server_round, arrays, config, messages)
        if self.global_evaluate is not None:
            # Flower evaluates these arrays on the server after the clients' evaluation; a
            # global_evaluate that returns a Future works while the clients evaluate.
            self._global = (server_round, arrays,
                            self.global_evaluate(server_round, self._state(arrays)))
        return messages

    def _ask_local_barriers(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            messages: list[Message]) -> list[Message]:
        """The evaluation messages, with every trained client asked for local barriers."""
        if len(self._trained) < 2:
            self.pipeline.skip_local("fewer than 2 usable client models")
            return messages
        if isinstance(self.inner, AverageSchedule) and not self.inner.sends_average(server_round):
            self.pipeline.skip_local("the strategy sends no average after this round")
            return messages
        average = self.pipeline.average
        assert average is not None
        by_node = {m.metadata.dst_node_id: m for m in messages}
        template = messages[0] if messages else None
        decoded: dict[int, StateDict] = {}
        trained_nodes = [node for _, node in sorted(self._trained.items())]
        client_of = {node: client for client, node in self._trained.items()}
        aligned, aligned_average = None, None
        if self.pipeline.aligned is not None and self.pipeline.aligned_average is not None:
            aligned = {client: {name: perm.to(torch.int64) for name, perm in perms.items()}
                       for client, perms in zip(self.pipeline.record.clients,
                                                self.pipeline.aligned.perms)}
            aligned_average = ArrayRecord(self.pipeline.aligned_average)
        out = [m for m in messages if m.metadata.dst_node_id not in set(trained_nodes)]
        extra_bytes = 0
        for node in trained_nodes:
            base = by_node.get(node, template)
            if base is not None:
                (arrays_key, sent), = base.content.array_records.items()
                (config_key, base_config), = base.content.config_records.items()
            else:  # the strategy evaluates nobody: send what it would send next, the model
                arrays_key, sent, config_key = "arrays", arrays, "config"
                base_config = ConfigRecord({**dict(config), SERVER_ROUND: server_round})
            if id(sent) not in decoded:
                decoded[id(sent)] = decode(sent)
            missing = _differing(average, decoded[id(sent)])
            local_only = node not in by_node
            content = RecordDict({
                arrays_key: sent,
                config_key: ConfigRecord({**dict(base_config), LOCAL_BARRIERS: True,
                                          LOCAL_ONLY: local_only})})
            if missing:
                content[AVERAGE] = ArrayRecord(missing)
                extra_bytes += sum(len(a.data) for a in content[AVERAGE].values())
            if aligned is not None:  # barriers.align: the aligned average, the client's permutation
                content[ALIGNED_AVERAGE] = aligned_average
                content[PERMUTATION] = ArrayRecord(aligned[client_of[node]])
                extra_bytes += sum(len(a.data) for key in (ALIGNED_AVERAGE, PERMUTATION)
                                   for a in content[key].values())
            if local_only:
                self._local_only.add(node)
                extra_bytes += sum(len(a.data) for a in sent.values())
            out.append(Message(content=content, dst_node_id=node,
                               message_type=MessageType.EVALUATE))
        self.pipeline.record.bytes_instrumentation += extra_bytes
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        server_round += self.offset
        messages = self._sorted(replies)
        decoded = [self._reply(m, with_state=False) for m in messages]
        reports = {r.client: r.local for r in decoded if r.local is not None}
        keep = [i for i, m in enumerate(messages)
                if m.metadata.src_node_id not in self._local_only]
        metrics = self.inner.aggregate_evaluate(server_round, [messages[i] for i in keep])
        self.pipeline.evaluate_replies([decoded[i] for i in keep], metrics)
        if self.pipeline.local_round():
            self.pipeline.local_reports(reports)
        return metrics

    def summary(self) -> None:
        self.inner.summary()

    # -- round end ------------------------------------------------------------------------------
    def _round_end(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: the global evaluation, then the round's record."""
        if server_round == 0 and self.offset > 0:
            return None  # resuming: the initial model was evaluated by the first attempt
        server_round += self.offset if server_round > 0 else 0
        values: dict[str, Any] = {}
        if self.global_evaluate is not None:
            started, self._global = self._global, None
            if started is not None and started[0] == server_round and started[1] is arrays:
                result = started[2]
            else:
                result = self.global_evaluate(server_round, self._state(arrays))
            values = dict(result.result() if isinstance(result, Future) else result)
        if self._caller_evaluate is not None:
            values.update(self._caller_evaluate(server_round, arrays) or {})

        def save(r: int) -> None:
            if self.save_state is not None:
                self.save_state(r, self._state(arrays))

        self.pipeline.finish(server_round, values, save)
        return MetricRecord(values) if values else None

