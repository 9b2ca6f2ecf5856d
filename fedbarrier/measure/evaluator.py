"""Score many variants of one architecture on one fixed data sample, cheaply and exactly.

A barrier measurement with K clients and L layers scores up to K(1 + 3L) + 1 models that differ
only in which tensors sit in which layer. :class:`ModelEvaluator` therefore

- moves the data sample to the device once and reuses it for every model,
- never copies a model: each variant is a dict of tensors swapped into one reusable module with
  ``torch.func.functional_call``,
- runs batch-major (every variant sees batch 1, then batch 2, ...), so a batch stays hot, and
- with ``share_activations``, walks the variants as a prefix tree over the model's *stages*
  (``fedbarrier.measure.layers.model_stages``): variants that use the same tensors for their first
  stages share those stages' activations, which are computed once. Per-layer and deep
  cumulative variants share everything below the changed layer with their default client's
  model, and shallow cumulative variants share their prefix with the full average.
- keeps the activations of convolutional models in ``channels_last`` memory format. On CPU,
  PyTorch's max-pooling and oneDNN's convolutions are several times faster on channels-last
  tensors (1.7 ms vs 0.2 ms to pool the small CNN's first activation on 300 digits); the
  numbers are the same up to floating-point summation order.

- keeps each leaf's per-example values (cross-entropy, correct or not) on the device and reads
  everything back in one transfer at the end of a call, so every variant also comes with its
  per-example loss and error vectors (``"examples"``, for the barriers' standard errors) at no
  extra forward pass.

Both paths compute the same numbers (up to floating-point summation order within a stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedbarrier.learn.local import eval_batch_size
from fedbarrier.measure.layers import Stage

StateDict = Mapping[str, torch.Tensor]


class ModelEvaluator:
    """Callable ``evaluate_many(states) -> [{"loss": ..., "error": ...}, ...]`` in eval mode.

    ``loss`` is the mean cross-entropy per example; ``error`` is 100 - accuracy in percent
    (BARRIERS.md). With ``per_example`` (the default) each result also holds ``"examples":
    {"loss": cross-entropy of each example, "error": 100 * [misclassified] of each example}``,
    float64 numpy arrays in the order of ``y``. ``stage_calls`` counts stage evaluations (per
    batch) for benchmarks.
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
        channels_last: bool | None = None,
        per_example: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.stages = list(stages) if stages else []
        self.share_activations = share_activations and len(self.stages) > 1
        convs = [m for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        self.channels_last = bool(convs) if channels_last is None else channels_last
        self._convs = convs if self.channels_last else []
        if self.channels_last and self.x.dim() == 4:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.batch_size = eval_batch_size(batch_size, tuple(self.x.shape[1:]))  # 0: auto
        self.per_example = per_example
        self.stage_calls = 0
        self.forward_calls = 0

    @property
    def num_examples(self) -> int:
        """n, the size of the data sample."""
        return len(self.y)

    def __call__(self, states: Sequence[StateDict]) -> list[dict[str, Any]]:
        variants = self._to_device(states)
        # One _Leaf per (batch, group of identical variants), kept on the device and read back
        # once at the end: reading each leaf's numbers (float(), int()) would stall a GPU after
        # every variant.
        leaves: list[_Leaf] = []
        was_training = self.model.training
        self.model.eval()
        # Conv outputs become channels-last, so the layers after them (ReLU, pooling, the next
        # conv) run on that format too, also where a conv's input has one channel (C = 1 gives
        # no format to inherit). The hooks live only for this call: the module is shared.
        handles = [conv.register_forward_hook(_channels_last_output) for conv in self._convs]
        try:
            with torch.inference_mode():
                for start in range(0, len(self.y), self.batch_size):
                    xb = self.x[start:start + self.batch_size]
                    yb = self.y[start:start + self.batch_size]
                    if self.share_activations:
                        self._shared(variants, start, xb, yb, leaves)
                    else:
                        for i, variant in enumerate(variants):
                            logits = functional_call(self.model, variant, (xb,))
                            self.forward_calls += 1
                            leaves.append(_leaf([i], start, logits, yb, self.per_example))
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        n = len(self.y)
        loss_sum = [0.0] * len(variants)
        correct = [0.0] * len(variants)
        example_loss = np.zeros((len(variants), n)) if self.per_example else None
        example_correct = np.zeros((len(variants), n)) if self.per_example else None
        if leaves:
            host = _read_back(leaves, self.per_example)
            count = len(leaves)
            losses, hits = host[:count].tolist(), host[count:2 * count].tolist()
            offset = 2 * count
            for leaf, loss, hit in zip(leaves, losses, hits):
                for i in leaf.members:
                    loss_sum[i] += loss
                    correct[i] += hit
                if example_loss is not None and example_correct is not None:
                    size = len(leaf.example_loss)  # type: ignore[arg-type]
                    window = slice(leaf.start, leaf.start + size)
                    example_loss[leaf.members, window] = host[offset:offset + size]
                    example_correct[leaf.members, window] = host[offset + size:offset + 2 * size]
                    offset += 2 * size
        scores: list[dict[str, Any]] = [
            {"loss": loss_sum[i] / n, "error": 100.0 - 100.0 * correct[i] / n}
            for i in range(len(variants))]
        if example_loss is not None and example_correct is not None:
            example_error = 100.0 * (1.0 - example_correct)
            for i, score in enumerate(scores):
                score["examples"] = {"loss": example_loss[i], "error": example_error[i]}
        return scores

    def _to_device(self, states: Sequence[StateDict]) -> list[dict[str, torch.Tensor]]:
        """Move each distinct tensor once, keeping tensor identity (which the sharing relies on)."""
        moved: dict[int, torch.Tensor] = {}
        out = []
        for state in states:
            variant = {}
            for k, t in state.items():
                if id(t) not in moved:
                    fmt = (torch.channels_last if self.channels_last and t.dim() == 4
                           else torch.preserve_format)
                    moved[id(t)] = t.to(self.device, non_blocking=True, memory_format=fmt)
                variant[k] = moved[id(t)]
            out.append(variant)
        return out

    def _shared(self, variants: list[dict[str, torch.Tensor]], start: int, xb: torch.Tensor,
                yb: torch.Tensor, leaves: list[_Leaf]) -> None:
        # Depth-first over the prefix tree: only one activation per depth is alive at a time.
        signatures = [[tuple(id(v[k]) for k in stage.keys) for stage in self.stages]
                      for v in variants]

        def visit(depth: int, members: list[int], act: torch.Tensor) -> None:
            if depth == len(self.stages):
                leaves.append(_leaf(members, start, act, yb, self.per_example))
                return
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in members:
                groups.setdefault(signatures[i][depth], []).append(i)
            stage = self.stages[depth]
            for group in groups.values():
                self.stage_calls += 1
                visit(depth + 1, group, stage(variants[group[0]], act))

        visit(0, list(range(len(variants))), xb)

class _Leaf(NamedTuple):
    """One batch's numbers for a group of identical variants, on the batch's device."""

    members: list[int]  # the variants
    start: int  # the batch's first example
    loss: torch.Tensor  # summed cross-entropy, float64 scalar
    hits: torch.Tensor  # number of correct predictions, float64 scalar
    example_loss: torch.Tensor | None  # cross-entropy of each example (float32), if kept
    example_correct: torch.Tensor | None  # 1 where correct (bool), if kept


def _leaf(members: list[int], start: int, logits: torch.Tensor, yb: torch.Tensor,
          per_example: bool) -> _Leaf:
    """Summed cross-entropy and number of correct predictions of a batch as float64 tensors
    (summed over batches and leaves in float64, as Python floats were), and, with
    ``per_example``, the per-example values they sum. ``F.cross_entropy`` is ``nll_loss`` of
    ``log_softmax``, so the sums are bit-for-bit those of ``F.cross_entropy(reduction="sum")``."""
    log_p = F.log_softmax(logits.float(), dim=1)
    loss = F.nll_loss(log_p, yb, reduction="sum").double()
    hit = logits.argmax(dim=1) == yb
    hits = hit.sum().double()
    if not per_example:
        return _Leaf(members, start, loss, hits, None, None)
    return _Leaf(members, start, loss, hits, -log_p.gather(1, yb[:, None]).squeeze(1), hit)


def _read_back(leaves: Sequence[_Leaf], per_example: bool) -> np.ndarray:
    """Every leaf's numbers in one device-to-host transfer, float64: all summed losses, all hit
    counts, then per leaf (with ``per_example``) its example losses followed by its example hits."""
    parts = [torch.stack([leaf.loss for leaf in leaves]), torch.stack([leaf.hits for leaf in leaves])]
    if per_example:
        for leaf in leaves:
            parts += [leaf.example_loss.double(), leaf.example_correct.double()]  # type: ignore[union-attr]
    return torch.cat(parts).cpu().numpy()


def _channels_last_output(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous(memory_format=torch.channels_last) if output.dim() == 4 else output
