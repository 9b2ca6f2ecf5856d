"""The barrier hook: measures a round's barriers between the clients' models before aggregation.

It is a round hook of :mod:`fedbarrier.fl.round` (``before_aggregation`` / ``on_round_end``) but
knows nothing of Flower or of the run directory: it gets the round's models as
:class:`ClientModels` and hands each measurement record to ``write`` and to its listeners.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedbarrier.config import SERVER_SPLITS, BarrierConfig
from fedbarrier.measure.alignment import AlignedModels, PermutationSpec, align_round
from fedbarrier.measure.barriers import layer_distances, measure_barriers
from fedbarrier.measure.evaluator import ModelEvaluator
from fedbarrier.measure.layers import LayerGroups, Stage
from fedbarrier.seeds import Stream, default_clients_seed, derive_seed


@dataclass(frozen=True)
class ClientModels:
    """What the sampled clients sent back in one round, ordered by client (partition) id."""

    server_round: int
    client_ids: list[int]
    states: list[dict[str, torch.Tensor]]
    num_examples: list[int]
    received: dict[str, torch.Tensor] | None  # the model the server sent this round
    # What each client was actually sent, in client order: only the shared layers under partial
    # sharing, another client's model in a daisy-chaining round (None: the same as ``received``).
    sent: list[dict[str, torch.Tensor]] | None = None
    # The models aligned to a reference, when the round pipeline aligned them (barriers.align
    # with local barriers: the clients need their permutations); else the hook aligns them.
    aligned: AlignedModels | None = None


RoundValues = dict[str, Any]


def align_models(spec: PermutationSpec, models: ClientModels, *, reference: str,
                 seed: int) -> AlignedModels:
    """A round's client models aligned to ``reference`` (``barriers.align_reference``), the
    matching seeded by (run seed, round): the one call of the hook and of the round pipeline."""
    return align_round(spec, models.states, models.num_examples, models.client_ids, models.received,
                       reference=reference,
                       seed=derive_seed(seed, Stream.ALIGNMENT, models.server_round))


def measure_record(
    cfg: BarrierConfig,
    model: nn.Module,
    groups: LayerGroups,
    stages: Sequence[Stage],
    states: Sequence[dict[str, torch.Tensor]],
    weights: Sequence[float],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    defaults: list[int] | None,
    seed: int,
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    """One barrier measurement on (x, y) as a JSON-ready record (also used offline)."""
    start = time.perf_counter()
    evaluator = ModelEvaluator(model, x, y, stages=stages, share_activations=cfg.share_activations,
                               batch_size=batch_size, device=device)
    result = measure_barriers(states, weights, groups, evaluator, families=cfg.families,
                              defaults=defaults, curve_points=cfg.curve_points, window=cfg.window,
                              random_orders=cfg.random_orders, seed=derive_seed(seed, Stream.LAYER_ORDERS))
    return {"n": len(y), "families": list(cfg.families),
            "share_activations": cfg.share_activations, **result.to_record(),
            "seconds": time.perf_counter() - start}


SampleFn = Callable[[str, Sequence[int]], tuple[torch.Tensor, torch.Tensor]]


class BarrierHook:
    """Measures the barriers of BARRIERS.md between the clients' models before aggregation.

    Hands one record per (round, split) to ``write`` (the run's ``barriers.jsonl``) and returns
    the full barrier of each split and metric (e.g. ``barrier_full_test_loss``) for the round's
    metrics record.

    Measurements run on ``executor`` (the server's compute thread, see
    ``fedbarrier.fl.server_app``) or, without one, in the caller's thread. With ``cfg.overlap`` a
    ``Future`` is returned: the server is otherwise idle while the clients evaluate, so the
    round gets longer only by what the measurement takes beyond that phase. Listeners (a
    strategy that aggregates by the barriers) need the numbers before aggregation, so with
    listeners it always blocks. The numbers are the same either way: they depend on the models
    and the sample, not on timing.
    """

    def __init__(
        self,
        cfg: BarrierConfig,
        *,
        model: nn.Module,
        groups: LayerGroups,
        stages: Sequence[Stage],
        sample: SampleFn,
        write: Callable[[dict[str, Any]], None] | None,
        num_rounds: int,
        seed: int,
        device: torch.device,
        batch_size: int = 1000,
        executor: Executor | None = None,
        spec: PermutationSpec | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = spec  # with cfg.align: how the model's hidden units may be permuted
        self.executor = executor  # where measurements run (None: in the caller's thread)
        self.model = model
        self.groups = groups
        self.stages = list(stages)
        self.sample = sample
        self.write = write
        self.num_rounds = num_rounds
        self.seed = seed
        self.device = device
        self.batch_size = batch_size
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. barrier-aware strategies

    def should_measure(self, server_round: int) -> bool:
        every = self.cfg.every
        return self.cfg.enabled and (server_round % every == 0 or server_round == self.num_rounds)

    def _defaults(self, server_round: int, num: int) -> list[int] | None:
        k = self.cfg.max_defaults
        if k == 0 or k >= num:
            return None
        rng = np.random.default_rng(default_clients_seed(self.seed, server_round))
        return sorted(int(i) for i in rng.choice(num, size=k, replace=False))

    def before_aggregation(self, models: ClientModels) -> RoundValues | Future[RoundValues] | None:
        if not self.should_measure(models.server_round) or len(models.states) < 2:
            return None
        if self.executor is None:
            return self.measure(models)
        future = self.executor.submit(self.measure, models)
        if not self.cfg.overlap or self.listeners:
            return future.result()
        return future

    def on_round_end(self, record: Any) -> None:
        return None

    def measure(self, models: ClientModels) -> RoundValues:
        """Measure and record one round's barriers; returns the round's summary numbers."""
        ids = models.client_ids
        defaults = self._defaults(models.server_round, len(ids))
        distances = (layer_distances(models.states, models.num_examples, self.groups,
                                     reference=models.sent or models.received)
                     if self.cfg.distances else None)
        aligned = self._aligned(models)
        summary: dict[str, Any] = {}
        if aligned is not None:
            summary["barrier_seconds_align"] = aligned["seconds"]
        for split in [s for s in self.cfg.splits if s in SERVER_SPLITS]:
            x, y = self.sample(split, ids)
            record = {"round": models.server_round, "split": split, "clients": ids,
                      "num_examples": models.num_examples,
                      **self._measure(models.states, models.num_examples, x, y, defaults),
                      "distances": distances}
            record["default_clients"] = [ids[d] for d in record["defaults"]]
            if aligned is not None:
                start = time.perf_counter()
                values = self._measure(aligned["states"], models.num_examples, x, y, defaults)
                for key in ("n", "families", "share_activations", "layers", "weights", "defaults",
                            "endpoint", "seconds"):  # as the record's: alignment keeps functions
                    values.pop(key, None)
                record["aligned"] = {"aligned_to": aligned["reference"], **values,
                                     "distances": aligned["distances"]}
                record["seconds"] += time.perf_counter() - start
                for metric, value in values["full"].items():
                    summary[f"barrier_full_aligned_{split}_{metric}"] = value
            if self.write is not None:
                self.write(record)
            for listener in self.listeners:
                listener(record)
            for metric, value in record["full"].items():
                summary[f"barrier_full_{split}_{metric}"] = value
            summary[f"barrier_seconds_{split}"] = record["seconds"]
        return summary

    def _measure(self, states: Sequence[dict[str, torch.Tensor]], weights: Sequence[int],
                 x: torch.Tensor, y: torch.Tensor, defaults: list[int] | None) -> dict[str, Any]:
        return measure_record(self.cfg, self.model, self.groups, self.stages, states, weights, x, y,
                              defaults=defaults, seed=self.seed, device=self.device,
                              batch_size=self.batch_size)

    def _aligned(self, models: ClientModels) -> dict[str, Any] | None:
        """The clients' models permuted to the reference (``cfg.align``), once per round; the
        round pipeline's when it aligned them already (for the clients' local barriers)."""
        if self.cfg.align == "none" or (self.spec is None and models.aligned is None):
            return None
        start = time.perf_counter()
        aligned = models.aligned
        if aligned is None:
            assert self.spec is not None
            aligned = align_models(self.spec, models, reference=self.cfg.align_reference, seed=self.seed)
        distances = (layer_distances(aligned.states, models.num_examples, self.groups, reference=None)
                     if self.cfg.distances else None)
        return {"reference": aligned.aligned_to, "states": aligned.states, "distances": distances,
                "seconds": time.perf_counter() - start}
