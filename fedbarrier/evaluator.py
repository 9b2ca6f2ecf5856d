"""Score many variants of one architecture on one fixed data sample, cheaply and exactly.

A barrier measurement with K clients and L layers scores up to K(1 + 3L) + 1 models that differ
only in which tensors sit in which layer. :class:`ModelEvaluator` therefore

- moves the data sample to the device once and reuses it for every model,
- never copies a model: each variant is a dict of tensors swapped into one reusable module with
  ``torch.func.functional_call``,
- runs batch-major (every variant sees batch 1, then batch 2, ...), so a batch stays hot, and
- with ``share_activations``, walks the variants as a prefix tree over the model's *stages*
  (``fedbarrier.layers.model_stages``): variants that use the same tensors for their first
  stages share those stages' activations, which are computed once. Per-layer and deep
  cumulative variants share everything below the changed layer with their default client's
  model, and shallow cumulative variants share their prefix with the full average.

Both paths compute the same numbers (up to floating-point summation order within a stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedbarrier.layers import Stage

StateDict = Mapping[str, torch.Tensor]


class ModelEvaluator:
    """Callable ``evaluate_many(states) -> [{"loss": ..., "error": ...}, ...]`` in eval mode.

    ``loss`` is the mean cross-entropy per example; ``error`` is 100 - accuracy in percent
    (BARRIERS.md). ``stage_calls`` counts stage evaluations (per batch) for benchmarks.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        stages: Sequence[Stage] | None = None,
        share_activations: bool = True,
        batch_size: int = 1000,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.stages = list(stages) if stages else []
        self.share_activations = share_activations and len(self.stages) > 1
        self.batch_size = batch_size
        self.stage_calls = 0
        self.forward_calls = 0

    def __call__(self, states: Sequence[StateDict]) -> list[dict[str, float]]:
        variants = self._to_device(states)
        loss_sum = [0.0] * len(variants)
        correct = [0] * len(variants)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(self.y), self.batch_size):
                    xb = self.x[start:start + self.batch_size]
                    yb = self.y[start:start + self.batch_size]
                    if self.share_activations:
                        self._shared(variants, xb, yb, loss_sum, correct)
                    else:
                        for i, variant in enumerate(variants):
                            logits = functional_call(self.model, variant, (xb,))
                            self.forward_calls += 1
                            self._accumulate(logits, yb, [i], loss_sum, correct)
        finally:
            self.model.train(was_training)
        n = len(self.y)
        return [{"loss": loss_sum[i] / n, "error": 100.0 - 100.0 * correct[i] / n}
                for i in range(len(variants))]

    def _to_device(self, states: Sequence[StateDict]) -> list[dict[str, torch.Tensor]]:
        """Move each distinct tensor once, keeping tensor identity (which the sharing relies on)."""
        moved: dict[int, torch.Tensor] = {}
        out = []
        for state in states:
            variant = {}
            for k, t in state.items():
                if id(t) not in moved:
                    moved[id(t)] = t.to(self.device, non_blocking=True)
                variant[k] = moved[id(t)]
            out.append(variant)
        return out

    def _shared(self, variants: list[dict[str, torch.Tensor]], xb: torch.Tensor,
                yb: torch.Tensor, loss_sum: list[float], correct: list[int]) -> None:
        # Depth-first over the prefix tree: only one activation per depth is alive at a time.
        signatures = [[tuple(id(v[k]) for k in stage.keys) for stage in self.stages]
                      for v in variants]

        def visit(depth: int, members: list[int], act: torch.Tensor) -> None:
            if depth == len(self.stages):
                self._accumulate(act, yb, members, loss_sum, correct)
                return
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in members:
                groups.setdefault(signatures[i][depth], []).append(i)
            stage = self.stages[depth]
            for group in groups.values():
                self.stage_calls += 1
                visit(depth + 1, group, stage(variants[group[0]], act))

        visit(0, list(range(len(variants))), xb)

    @staticmethod
    def _accumulate(logits: torch.Tensor, yb: torch.Tensor, members: list[int],
                    loss_sum: list[float], correct: list[int]) -> None:
        loss = float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        hits = int((logits.argmax(dim=1) == yb).sum())
        for i in members:
            loss_sum[i] += loss
            correct[i] += hits
