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

Both paths compute the same numbers (up to floating-point summation order within a stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
        channels_last: bool | None = None,
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
        self.stage_calls = 0
        self.forward_calls = 0

    def __call__(self, states: Sequence[StateDict]) -> list[dict[str, float]]:
        variants = self._to_device(states)
        # (members, summed loss, hits) per leaf, kept on the device and read back once at the end:
        # reading each leaf's numbers (float(), int()) would stall a GPU after every variant.
        leaves: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
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
                        self._shared(variants, xb, yb, leaves)
                    else:
                        for i, variant in enumerate(variants):
                            logits = functional_call(self.model, variant, (xb,))
                            self.forward_calls += 1
                            leaves.append(([i], *_loss_and_hits(logits, yb)))
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        loss_sum = [0.0] * len(variants)
        correct = [0.0] * len(variants)
        if leaves:
            losses = torch.stack([leaf[1] for leaf in leaves]).tolist()
            hits = torch.stack([leaf[2] for leaf in leaves]).tolist()
            for (members, _, _), loss, hit in zip(leaves, losses, hits):
                for i in members:
                    loss_sum[i] += loss
                    correct[i] += hit
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
                    fmt = (torch.channels_last if self.channels_last and t.dim() == 4
                           else torch.preserve_format)
                    moved[id(t)] = t.to(self.device, non_blocking=True, memory_format=fmt)
                variant[k] = moved[id(t)]
            out.append(variant)
        return out

    def _shared(self, variants: list[dict[str, torch.Tensor]], xb: torch.Tensor,
                yb: torch.Tensor, leaves: list[tuple[list[int], torch.Tensor, torch.Tensor]]
                ) -> None:
        # Depth-first over the prefix tree: only one activation per depth is alive at a time.
        signatures = [[tuple(id(v[k]) for k in stage.keys) for stage in self.stages]
                      for v in variants]

        def visit(depth: int, members: list[int], act: torch.Tensor) -> None:
            if depth == len(self.stages):
                leaves.append((members, *_loss_and_hits(act, yb)))
                return
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in members:
                groups.setdefault(signatures[i][depth], []).append(i)
            stage = self.stages[depth]
            for group in groups.values():
                self.stage_calls += 1
                visit(depth + 1, group, stage(variants[group[0]], act))

        visit(0, list(range(len(variants))), xb)

def _loss_and_hits(logits: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct predictions of a batch, as float64 tensors on
    the batch's device (summed over batches and leaves in float64, as Python floats were)."""
    loss = F.cross_entropy(logits.float(), yb, reduction="sum").double()
    hits = (logits.argmax(dim=1) == yb).sum().double()
    return loss, hits


def _channels_last_output(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous(memory_format=torch.channels_last) if output.dim() == 4 else output
