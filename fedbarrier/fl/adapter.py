"""Wrap any Flower Message-API strategy with round hooks, determinism and accounting.

``Instrumented(FedAvg(...), hooks=[BarrierHook(...)])`` is itself a Flower ``Strategy``: run it
with Flower's own ``strategy.start(..., evaluate_fn=instrumented.evaluate_fn)``. It

- hands the inner strategy a grid whose node ids are ordered by partition id and seeds Python's
  ``random`` (which Flower's ``sample_nodes`` uses) per round, so client sampling is the same run
  after run;
- sorts replies by partition id before aggregation, so floating-point sums happen in one order;
- copies the clients' models out of the replies *before* the inner ``aggregate_train`` (some
  strategies pop arrays out of the replies) and gives them to each hook's ``before_aggregation``
  (a hook that returns a ``Future`` works on while the clients evaluate; it is awaited after the
  global evaluation, before the round's state is saved);
- starts the server's global evaluation of a round's model in ``configure_evaluate``, so a
  ``global_evaluate`` that returns a ``Future`` overlaps the clients' evaluation;
- counts the bytes of arrays sent and received, times the round, and emits one record per round
  to each hook's ``on_round_end`` from ``evaluate_fn`` (Flower calls it last in every round).

It never changes what the inner strategy aggregates.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedbarrier.errors import RunAborted
from fedbarrier.learn.local import derive_seed
from fedbarrier.measure.hook import ClientModels, RoundHook

CLIENT_RECORD = "client"  # reply ConfigRecord carrying the client's partition id
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"  # Flower's FedAvg weights by this MetricRecord key
SHARED_LAYERS = "shared-layers"  # config key: layers a partial-sharing strategy sends this round


class _OrderedGrid:
    """A view of a Grid whose ``get_node_ids`` lists nodes by partition id (unknown nodes by
    their node id)."""

    def __init__(self, grid: Grid, partition_of: Mapping[int, int]) -> None:
        self._grid = grid
        self._partition_of = partition_of

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=lambda n: self._partition_of.get(n, n))

    def partition_id(self, node_id: int) -> int | None:
        """The partition (client) id of a node (None if unknown): strategies that keep
        per-client state across a resume (node ids are new then) look clients up here."""
        return self._partition_of.get(node_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def array_bytes(messages: Iterable[Message], keys: set[str] | None = None) -> int:
    """Bytes of the arrays in ``messages`` (only those named in ``keys``, if given)."""
    total = 0
    for msg in messages:
        if not msg.has_content():
            continue
        for record in msg.content.array_records.values():
            total += sum(len(arr.data) for k, arr in record.items() if keys is None or k in keys)
    return total


def _sent_layers(messages: list[Message]) -> tuple[set[str] | None, list[str] | None]:
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


def client_spread(replies: list[Message], pid: Callable[[Message], int]) -> dict[str, Any]:
    """Per-client values of each evaluation metric, with their std, min and max across clients.

    The strategy's aggregate is the example-weighted mean; the spread shows who it hides.
    """
    out: dict[str, Any] = {}
    values: dict[str, dict[str, float]] = {}
    for msg in replies:
        for record in msg.content.metric_records.values():
            for key, value in record.items():
                if key != NUM_EXAMPLES and isinstance(value, (int, float)):
                    values.setdefault(key, {})[str(pid(msg))] = float(value)
    for key, by_client in values.items():
        v = np.array(list(by_client.values()))
        out[f"{key}_by_client"] = by_client
        out[f"{key}_std"] = float(v.std())
        out[f"{key}_min"] = float(v.min())
        out[f"{key}_max"] = float(v.max())
    return out


#: Evaluates a round's global model on the server: the metrics, or a Future of them.
GlobalEvaluate = Callable[[int, ArrayRecord], "Mapping[str, float] | Future[Mapping[str, float]]"]


class Instrumented(Strategy):
    """A Flower strategy that runs ``inner`` and calls ``hooks`` around it (see module doc)."""

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
        save_state: Callable[[int, ArrayRecord], None] | None = None,
    ) -> None:
        self.inner = inner
        self.hooks = list(hooks)
        self.seed = seed
        self.min_clients = min_clients
        # Resuming after `completed_rounds`: Flower's loop counts from 1 again, we add the offset.
        self.offset = completed_rounds
        self.save_state = save_state
        self.partition_of = dict(partition_of or {})
        self.global_evaluate = global_evaluate
        self._record: dict[str, Any] = {}
        self._round_start = time.perf_counter()
        self._received: dict[str, torch.Tensor] | None = None
        self._sent_to: dict[int, ArrayRecord] = {}  # node id -> the arrays it was sent
        self._arrays: ArrayRecord | None = None  # the round's global model, as configure_train got it
        self._sent_keys: set[str] | None = None
        self._pending: list[Future[dict[str, Any]]] = []  # hook work running past aggregation
        # (round, arrays, metrics or Future): the global evaluation started in configure_evaluate
        self._global: tuple[int, ArrayRecord, Any] | None = None

    # -- helpers --------------------------------------------------------------------------------
    def _pid(self, node_id: int) -> int:
        return self.partition_of.get(node_id, node_id)

    def _grid(self, grid: Grid) -> Grid:
        return _OrderedGrid(grid, self.partition_of)  # type: ignore[return-value]

    def _reply_pid(self, msg: Message) -> int:
        content = msg.content if msg.has_content() else None
        if content is not None and CLIENT_RECORD in content.config_records:
            return int(content.config_records[CLIENT_RECORD][PARTITION_ID])
        return self._pid(msg.metadata.src_node_id)

    def _sorted(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda m: (m.has_error(), self._pid(m.metadata.src_node_id)))

    # -- Strategy -------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self._round_start = time.perf_counter()
        self._record = {"round": server_round}
        self._received = arrays.to_torch_state_dict()
        self._arrays = arrays
        random.seed(derive_seed(self.seed, server_round, 0))
        messages = list(self.inner.configure_train(server_round, arrays, ConfigRecord(dict(config)),
                                                   self._grid(grid)))
        self._record["bytes_sent"] = array_bytes(messages)
        self._sent_to = {m.metadata.dst_node_id: next(iter(m.content.array_records.values()))
                         for m in messages if m.has_content() and m.content.array_records}
        self._sent_keys, shared = _sent_layers(messages)
        if shared is not None:
            self._record["shared_layers"] = shared
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        replies = self._sorted(replies)
        usable: list[Message] = []
        states: list[dict[str, torch.Tensor]] = []
        excluded: dict[str, str] = {}
        for msg in replies:
            state, reason = self._check_reply(msg)
            if reason is None:
                usable.append(msg)
                states.append(state)
            else:
                excluded[str(self._pid(msg.metadata.src_node_id))] = reason
        self._record["excluded_clients"] = excluded
        # Communication is what the strategy shares; whole-model replies beyond that exist only so
        # the server can measure barriers in simulation.
        self._record["bytes_received"] = array_bytes(usable, self._sent_keys)
        self._record["bytes_instrumentation"] = array_bytes(usable) - self._record["bytes_received"]
        self._record["clients"] = [self._reply_pid(m) for m in usable]
        if len(usable) < self.min_clients:
            raise RunAborted(
                f"round {server_round}: only {len(usable)} usable client models (minimum "
                f"strategy.min_clients = {self.min_clients}); excluded: "
                + "; ".join(f"client {c}: {r}" for c, r in excluded.items()))
        models = ClientModels(
            server_round=server_round,
            client_ids=self._record["clients"],
            states=states,
            num_examples=[int(next(iter(m.content.metric_records.values()))[NUM_EXAMPLES])
                          for m in usable],
            received=self._received,
            sent=self._sent_states(usable),
        )
        for hook in self.hooks:
            values = hook.before_aggregation(models)
            if isinstance(values, Future):
                self._pending.append(values)
            else:
                self._record.update(values or {})
        arrays, metrics = self.inner.aggregate_train(server_round, usable)
        if metrics is not None:
            self._record.update({k: v for k, v in metrics.items() if k != NUM_EXAMPLES})
        return arrays, metrics

    def _sent_states(self, replies: list[Message]) -> list[dict[str, torch.Tensor]]:
        """The arrays each replying client was sent this round (decoded once per record)."""
        decoded: dict[int, dict[str, torch.Tensor]] = {id(self._arrays): self._received or {}}
        out = []
        for msg in replies:
            record = self._sent_to.get(msg.metadata.src_node_id)
            if record is None:
                out.append({})
                continue
            if id(record) not in decoded:
                decoded[id(record)] = record.to_torch_state_dict()
            out.append(decoded[id(record)])
        return out

    def _check_reply(self, msg: Message) -> tuple[dict[str, torch.Tensor], str | None]:
        """The reply's model, or why it cannot be aggregated (error, divergence, bad arrays)."""
        if msg.has_error():
            return {}, f"client error: {error_summary(msg.error.reason)}"
        content = msg.content
        metrics = next(iter(content.metric_records.values()), {})
        if metrics.get("diverged"):
            return {}, "diverged: non-finite training loss"
        if len(content.array_records) != 1 or NUM_EXAMPLES not in metrics:
            return {}, "malformed reply: expected one ArrayRecord and num-examples"
        state = next(iter(content.array_records.values())).to_torch_state_dict()
        expected = self._received or {}
        if set(state) != set(expected):
            missing = sorted(set(expected) - set(state))[:3]
            unknown = sorted(set(state) - set(expected))[:3]
            return {}, f"wrong arrays: missing {missing}, unexpected {unknown}"
        for key, ref in expected.items():
            if state[key].shape != ref.shape:
                return {}, f"{key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
                return {}, f"non-finite values in {key}"
        return state, None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        random.seed(derive_seed(self.seed, server_round, 1))
        messages = list(self.inner.configure_evaluate(server_round, arrays,
                                                      ConfigRecord(dict(config)), self._grid(grid)))
        self._record["bytes_sent"] = self._record.get("bytes_sent", 0) + array_bytes(messages)
        if self.global_evaluate is not None:
            # Flower evaluates these arrays on the server after the clients' evaluation; a
            # global_evaluate that returns a Future works while the clients evaluate.
            self._global = (server_round, arrays, self.global_evaluate(server_round, arrays))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        server_round += self.offset
        replies = self._sorted(replies)
        self._record.update(client_spread([m for m in replies if not m.has_error()],
                                          self._reply_pid))
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self._record.update({k: v for k, v in metrics.items() if k != NUM_EXAMPLES})
        return metrics

    def summary(self) -> None:
        self.inner.summary()

    # -- round end ------------------------------------------------------------------------------
    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Pass to ``start(evaluate_fn=...)``: global evaluation, then the round's record.

        The round's server state is saved before its record is written, so a record in
        metrics.jsonl always has the state to resume from.
        """
        if server_round == 0 and self.offset > 0:
            return None  # resuming: the initial model was evaluated by the first attempt
        server_round += self.offset if server_round > 0 else 0
        record = self._record if server_round > 0 else {"round": 0}
        result = None
        if self.global_evaluate is not None:
            started, self._global = self._global, None
            if started is not None and started[0] == server_round and started[1] is arrays:
                values = started[2]
            else:
                values = self.global_evaluate(server_round, arrays)
            values = dict(values.result() if isinstance(values, Future) else values)
            record.update(values)
            result = MetricRecord(values)
        pending, self._pending = self._pending, []
        for future in pending:  # before the state is saved: a saved round has all its records
            record.update(future.result() or {})
        record["wall_seconds"] = time.perf_counter() - self._round_start if server_round else 0.0
        if self.save_state is not None and server_round > 0:
            self.save_state(server_round, arrays)
        for hook in self.hooks:
            hook.on_round_end(record)
        self._record = {}
        return result
