"""The round pipeline: what happens to one round's replies, without Flower.

Per round, in this order (the Flower adapter, :mod:`fedbarrier.fl.adapter`, calls each step from
the matching ``Strategy`` method; tests call them directly with hand-made :class:`Reply` objects):

1. :meth:`RoundPipeline.begin` -- the model the server sends, what it sent to whom, bytes sent;
2. :meth:`RoundPipeline.train_replies` -- check every reply (:func:`check_reply`), exclude the
   unusable ones with a reason, count bytes, stop the run below ``min_clients``, and give the usable
   models to each hook's ``before_aggregation`` (a hook may return a ``Future``: it then runs while
   the clients evaluate);
3. :meth:`RoundPipeline.train_metrics` / :meth:`RoundPipeline.evaluate_replies` -- the strategy's
   aggregated metrics and the clients' evaluation spread;
   With local barriers on (``LocalPlan``), the pipeline also holds the round's p-weighted average
   θ̄ of the usable models (what each client compares its own model with) and turns the clients'
   local-barrier reports into records (:meth:`RoundPipeline.local_reports`, or
   :meth:`RoundPipeline.skip_local` with the reason when the round has no average);
4. :meth:`RoundPipeline.finish` -- wait for the hooks, time the round, save the round's state,
   then hand the complete :class:`RoundRecord` to each hook's ``on_round_end``. The state is saved
   before the record is written, so a recorded round always has the state to resume from.

Every model arrives here decoded once (by the adapter); nothing in this module decodes arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from fedbarrier.errors import RunAborted
from fedbarrier.fl.protocol import DIVERGED, NUM_EXAMPLES, STORAGE_FAULT
from fedbarrier.measure.alignment import AlignedModels
from fedbarrier.measure.barriers import average_states
from fedbarrier.measure.hook import ClientModels

StateDict = Mapping[str, torch.Tensor]
RoundValues = dict[str, Any]


class RoundHook(Protocol):
    """Measurement and recording around a round (pfl-research style)."""

    def before_aggregation(self, models: ClientModels) -> RoundValues | Future[RoundValues] | None:
        """The usable replies' models before the strategy aggregates them: numbers for the
        round's record, a ``Future`` of them, or None."""
        ...

    def on_round_end(self, record: RoundRecord) -> None:
        """The round's complete record (after the server-side evaluation and the state save)."""
        ...


@dataclass(frozen=True)
class Reply:
    """One client's reply, decoded: ``state`` is its model (train replies), ``error`` the one
    informative line of a failure."""

    client: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    state: StateDict | None = None
    error: str | None = None
    array_records: int = 1  # how many ArrayRecords the reply held (one is expected)
    nbytes: int = 0  # bytes of all its arrays
    nbytes_shared: int = 0  # bytes of the arrays whose keys the server sent (what the strategy shares)
    adopted: list[str] | None = None  # barrier-aware: the averaged layers the client adopted
    local: Mapping[str, Any] | None = None  # local split -> the client's local-barrier report


def check_reply(reply: Reply, expected: StateDict) -> str | None:
    """Why ``reply``'s model cannot be aggregated (error, divergence, bad arrays), or None."""
    if reply.error is not None:
        return f"client error: {reply.error}"
    if reply.metrics.get(DIVERGED):
        return "diverged: non-finite training loss"
    if reply.array_records != 1 or reply.state is None or NUM_EXAMPLES not in reply.metrics:
        return "malformed reply: expected one ArrayRecord and num-examples"
    state = reply.state
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))[:3]
        unknown = sorted(set(state) - set(expected))[:3]
        return f"wrong arrays: missing {missing}, unexpected {unknown}"
    for key, ref in expected.items():
        if state[key].shape != ref.shape:
            return f"{key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
        if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
            return f"non-finite values in {key}"
    return None


def client_spread(replies: Sequence[Reply]) -> dict[str, Any]:
    """Per-client values of each evaluation metric, with their std, min and max across clients.

    The strategy's aggregate is the example-weighted mean; the spread shows who it hides.
    """
    values: dict[str, dict[str, float]] = {}
    for reply in replies:
        for key, value in reply.metrics.items():
            if key != NUM_EXAMPLES and isinstance(value, (int, float)):
                values.setdefault(key, {})[str(reply.client)] = float(value)
    out: dict[str, Any] = {}
    for key, by_client in values.items():
        v = np.array(list(by_client.values()))
        out[f"{key}_by_client"] = by_client
        out[f"{key}_std"] = float(v.std())
        out[f"{key}_min"] = float(v.min())
        out[f"{key}_max"] = float(v.max())
    return out


@dataclass
class RoundRecord:
    """One line of ``metrics.jsonl`` (docs/records.md documents every key).

    Typed fields hold what the pipeline itself knows; ``train``, ``evaluate``, ``global_``,
    ``measured`` hold what the strategy, the clients' evaluation, the server's evaluation and the
    hooks report (their keys are open: a plug-in strategy may add its own). :meth:`to_json` gives
    the flat record, in a fixed key order.
    """

    round: int
    bytes_sent: int = 0  # model arrays sent, train and evaluate messages
    shared_layers: list[str] | None = None  # under partial sharing: the layers sent this round
    excluded_clients: dict[str, str] = field(default_factory=dict)  # client id -> why
    bytes_received: int = 0  # arrays received that the strategy shares
    bytes_instrumentation: int = 0  # arrays received only for measurement
    clients: list[int] = field(default_factory=list)  # whose models were aggregated, in order
    adopted_layers: dict[str, list[str]] | None = None  # barrier-aware: client id -> its layers
    train: dict[str, Any] = field(default_factory=dict)  # the strategy's aggregated train metrics
    evaluate: dict[str, Any] = field(default_factory=dict)  # client spread, aggregated evaluation
    global_: dict[str, Any] = field(default_factory=dict)  # the server's evaluation
    measured: dict[str, Any] = field(default_factory=dict)  # the hooks' values (e.g. barriers)
    wall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        if self.round == 0:  # the initial model: only its evaluation
            return {"round": 0, **self.global_, **self.measured, "wall_seconds": self.wall_seconds}
        out: dict[str, Any] = {"round": self.round, "bytes_sent": self.bytes_sent}
        if self.shared_layers is not None:
            out["shared_layers"] = self.shared_layers
        out.update(excluded_clients=self.excluded_clients, bytes_received=self.bytes_received,
                   bytes_instrumentation=self.bytes_instrumentation, clients=self.clients)
        if self.adopted_layers is not None:
            out["adopted_layers"] = self.adopted_layers
        out.update(self.train)
        out.update(self.evaluate)
        out.update(self.global_)
        out.update(self.measured)
        out["wall_seconds"] = self.wall_seconds
        return out


def measurement_cost(measured: Mapping[str, Any], wall_seconds: float) -> dict[str, float]:
    """What the round's measurements took: ``measure_seconds`` (sum of the hooks'
    ``*_seconds*`` values) and ``measure_share`` of the round's wall time. With overlap the
    measurement partly hides behind the clients' evaluation, so the share is an upper bound on
    what it added."""
    seconds = sum(float(v) for k, v in measured.items()
                  if k.startswith("barrier_seconds") and isinstance(v, (int, float)))
    if not seconds:
        return {}
    return {"measure_seconds": seconds,
            "measure_share": seconds / wall_seconds if wall_seconds > 0 else 0.0}


def _as_dict(state: StateDict) -> dict[str, torch.Tensor]:
    """The same object when it is a dict already (hooks may rely on shared references: every
    client sent the same model gets the very tensors that were decoded once)."""
    return state if isinstance(state, dict) else dict(state)


@dataclass(frozen=True)
class LocalPlan:
    """Local barriers (measured by the clients): which splits, in which rounds, written where."""

    splits: tuple[str, ...]
    measured: Callable[[int], bool]  # whether round r is measured
    write: Callable[[dict[str, Any]], None] | None = None  # one record per (round, local split)
    # barriers.align: the round's models aligned to a reference; the clients then also measure
    # their local barriers after alignment (against the aligned average, with their permutation)
    align: Callable[[ClientModels], AlignedModels] | None = None


class RoundPipeline:
    """One round at a time: see the module docstring for the order of the steps."""

    def __init__(self, hooks: Sequence[RoundHook] = (), *, min_clients: int = 1,
                 local: LocalPlan | None = None) -> None:
        self.hooks = list(hooks)
        self.min_clients = min_clients
        self.local = local
        self.average: dict[str, torch.Tensor] | None = None  # θ̄ of a round with local barriers
        self.aligned: AlignedModels | None = None  # with LocalPlan.align: the aligned models
        self.aligned_average: dict[str, torch.Tensor] | None = None  # and their average
        self._weights: dict[int, int] = {}
        self._local_records: list[dict[str, Any]] = []  # written at the round's end, in order
        self.record = RoundRecord(round=0)
        self._expected: StateDict = {}
        self._sent_to: dict[int, StateDict] = {}
        self._pending: list[Future[RoundValues]] = []
        self._start = time.perf_counter()

    def begin(self, server_round: int, received: StateDict, *, bytes_sent: int,
              shared_layers: list[str] | None = None,
              sent_to: Mapping[int, StateDict] | None = None) -> None:
        """Start round ``server_round``: ``received`` is the model the server sends (the shape
        every reply must have), ``sent_to`` what each client (by id) was actually sent when that
        differs (partial sharing, daisy chaining)."""
        self._start = time.perf_counter()
        self.record = RoundRecord(round=server_round, bytes_sent=bytes_sent,
                                  shared_layers=shared_layers)
        self._expected = received
        self._sent_to = dict(sent_to or {})
        self._pending = []
        self.average = None
        self.aligned = None
        self.aligned_average = None
        self._weights = {}
        self._local_records = []

    def train_replies(self, replies: Sequence[Reply]) -> list[int]:
        """Check the replies (ordered by client id), run the hooks; the indices of the usable
        ones, in order. Raises RunAborted below ``min_clients``."""
        usable: list[int] = []
        record = self.record
        for reply in replies:  # a client that cannot write its state: the run cannot go on
            _, fault, cause = (reply.error or "").partition(f"{STORAGE_FAULT}: ")
            if fault:
                raise RunAborted(f"{cause} (client {reply.client}, round {record.round})")
        for i, reply in enumerate(replies):
            reason = check_reply(reply, self._expected)
            if reason is None:
                usable.append(i)
            else:
                record.excluded_clients[str(reply.client)] = reason
        # Communication is what the strategy shares; whole-model replies beyond that exist only
        # so that the server can measure barriers in simulation.
        record.bytes_received = sum(replies[i].nbytes_shared for i in usable)
        record.bytes_instrumentation = sum(replies[i].nbytes for i in usable) - record.bytes_received
        record.clients = [replies[i].client for i in usable]
        if len(usable) < self.min_clients:
            raise RunAborted(
                f"round {record.round}: only {len(usable)} usable client models (minimum "
                f"strategy.min_clients = {self.min_clients}); excluded: "
                + "; ".join(f"client {c}: {r}" for c, r in record.excluded_clients.items()))
        adopted = {str(replies[i].client): list(replies[i].adopted or []) for i in usable
                   if replies[i].adopted is not None}
        record.adopted_layers = adopted or None
        models = ClientModels(
            server_round=record.round,
            client_ids=record.clients,
            states=[_as_dict(replies[i].state or {}) for i in usable],
            num_examples=[int(replies[i].metrics[NUM_EXAMPLES]) for i in usable],
            received=_as_dict(self._expected),
            sent=[_as_dict(self._sent_to.get(replies[i].client, {})) for i in usable],
        )
        self._weights = dict(zip(models.client_ids, models.num_examples))
        if self.local is not None and self.local.measured(record.round) and models.states:
            self.average = average_states(models.states, models.num_examples)
            if self.local.align is not None and len(models.states) >= 2:
                self.aligned = self.local.align(models)
                self.aligned_average = average_states(self.aligned.states, models.num_examples)
                models = replace(models, aligned=self.aligned)  # the barrier hook's too
        for hook in self.hooks:
            values = hook.before_aggregation(models)
            if isinstance(values, Future):
                self._pending.append(values)
            else:
                record.measured.update(values or {})
        return usable

    def local_round(self) -> bool:
        """Whether the clients measure local barriers after this round's training."""
        return self.average is not None

    def skip_local(self, reason: str) -> None:
        """No local barriers this round (e.g. the strategy sends no average): say why."""
        assert self.local is not None
        self.average = self.aligned = self.aligned_average = None
        self.record.measured["local_barriers_skipped"] = reason
        for split in self.local.splits:
            self._queue_local({"round": self.record.round, "split": split, "skipped": reason})

    def local_reports(self, reports: Mapping[int, Mapping[str, Any]]) -> None:
        """The clients' local-barrier reports (client -> split -> report): one record per
        local split with every client's values and their summaries over the clients."""
        from fedbarrier.measure.local import summarize_local  # noqa: PLC0415 (until it lands)

        assert self.local is not None
        for split in self.local.splits:
            per_client = {c: r[split] for c, r in sorted(reports.items()) if split in r}
            measured = {c: r for c, r in per_client.items() if "skipped" not in r}
            record: dict[str, Any] = {
                "round": self.record.round, "split": split,
                "clients": sorted(measured),
                "skipped_clients": {str(c): r["skipped"] for c, r in per_client.items()
                                    if "skipped" in r},
                "missing_clients": sorted(set(self._weights) - set(per_client)),
            }
            if measured:
                weights = {c: float(self._weights.get(c, 1)) for c in measured}
                aligned = {c: r["aligned"] for c, r in measured.items()
                           if isinstance(r.get("aligned"), Mapping) and "skipped" not in r["aligned"]}
                measured = {c: {k: v for k, v in r.items() if k != "aligned"}
                            for c, r in measured.items()}
                summary = summarize_local(measured, weights)
                record.update(summary)
                record["by_client"] = {str(c): r for c, r in measured.items()}
                for metric, stats in summary.get("full", {}).items():
                    self.record.measured[f"barrier_local_full_{split}_{metric}"] = stats["mean"]
                if aligned:  # barriers.align: the same, each client against the aligned average
                    record["aligned"] = {
                        "aligned_to": self.aligned.aligned_to if self.aligned is not None else None,
                        **summarize_local(aligned, {c: weights[c] for c in aligned}),
                        "by_client": {str(c): r for c, r in aligned.items()}}
                    for metric, stats in record["aligned"].get("full", {}).items():
                        self.record.measured[f"barrier_local_full_aligned_{split}_{metric}"] = \
                            stats["mean"]
            self._queue_local(record)

    def _queue_local(self, record: dict[str, Any]) -> None:
        """Kept until :meth:`finish`: the hooks' server-side records (which may still be being
        measured) come first, so barriers.jsonl has one order whatever the timing."""
        self._local_records.append(record)

    def train_metrics(self, metrics: Mapping[str, Any] | None) -> None:
        """The strategy's aggregated training metrics."""
        self.record.train.update({k: v for k, v in (metrics or {}).items() if k != NUM_EXAMPLES})

    def evaluate_sent(self, nbytes: int) -> None:
        self.record.bytes_sent += nbytes

    def evaluate_replies(self, replies: Sequence[Reply],
                         metrics: Mapping[str, Any] | None) -> None:
        """The clients' evaluation replies (ordered by client id) and their aggregate."""
        self.record.evaluate.update(client_spread([r for r in replies if r.error is None]))
        errors = {str(r.client): f"client error: {r.error}" for r in replies if r.error is not None}
        if errors:  # a failed evaluation must not vanish from the record
            self.record.evaluate["evaluate_errors"] = errors
        self.record.evaluate.update({k: v for k, v in (metrics or {}).items()
                                     if k != NUM_EXAMPLES})

    def finish(self, server_round: int, global_metrics: Mapping[str, Any],
               save_state: Callable[[int], None] | None = None) -> RoundRecord:
        """Complete the round: wait for the hooks, save the state, emit the record."""
        record = self.record if server_round > 0 else RoundRecord(round=0)
        record.global_.update(global_metrics)
        pending, self._pending = self._pending, []
        for future in pending:  # before the state is saved: a saved round has all its records
            record.measured.update(future.result() or {})
        local, self._local_records = self._local_records, []
        if self.local is not None and self.local.write is not None:
            for entry in local:
                self.local.write(entry)
        if server_round > 0:
            record.wall_seconds = time.perf_counter() - self._start
            record.measured.update(measurement_cost(record.measured, record.wall_seconds))
            if save_state is not None:
                save_state(server_round)
        for hook in self.hooks:
            hook.on_round_end(record)
        self.record = RoundRecord(round=0)
        return record
