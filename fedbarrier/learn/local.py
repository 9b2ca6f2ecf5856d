"""Plain PyTorch local training and evaluation on in-memory tensors (no Flower here).

The loop is deliberately the one a researcher would write by hand: shuffle indices with a seeded
generator, index the tensors, SGD step. Benchmarks compare fedbarrier's rounds against exactly this.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedbarrier.config import TrainConfig
from fedbarrier.errors import UserError
from fedbarrier.seeds import Stream, derive_seed, training_seed


def resolve_device(spec: str) -> torch.device:
    """'auto' picks CUDA when available; an explicit CUDA device must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device = {spec!r} but no CUDA device is available; use auto or cpu")
    device = torch.device(spec)
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise UserError(f"train.device = {spec!r} but this machine has "
                        f"{torch.cuda.device_count()} CUDA device(s): cuda:0 .. "
                        f"cuda:{torch.cuda.device_count() - 1}")
    return device


#: Input values per evaluation batch when ``train.eval_batch_size = 0``: 128 CIFAR images.
AUTO_EVAL_BATCH_VALUES = 128 * 3 * 32 * 32


def eval_batch_size(configured: int, input_shape: tuple[int, ...]) -> int:
    """The evaluation batch size: ``configured``, or for 0 as many images as hold about
    :data:`AUTO_EVAL_BATCH_VALUES` input values.

    Why not one big batch: a batch's activations should fit in the CPU's caches. The small CNN
    evaluated 1,000 CIFAR-sized images ~2x faster in batches of 128 than in one batch, and in a
    simulation's server process one 1,000-batch took 0.5-1.4 s against 0.2 s in batches of 128
    (measured, 2 cores). Small images still go in one batch (8x8 digits: 6,144 a batch).
    """
    if configured > 0:
        return configured
    return max(1, AUTO_EVAL_BATCH_VALUES // math.prod(input_shape))


def lr_at(progress: float, base_lr: float, schedule: str, warmup: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of the whole run: a linear warm-up over the first
    ``warmup`` fraction, then ``constant`` (``base_lr``) or ``cosine`` (decay to 0).
    """
    if warmup > 0 and progress < warmup:
        return base_lr * (progress + 1e-12) / warmup
    if schedule == "constant":
        return base_lr
    rest = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, rest))))


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean training loss over all steps of this call
    steps: int
    examples: int  # examples seen (epochs x partition size)
    diverged: bool  # a non-finite loss was met (training stopped there)
    momentum: dict[str, torch.Tensor] | None = None  # SGD momentum buffers by parameter name


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation of a batch: each image padded by ``padding`` zeros on
    every side, cropped back to its size at a random offset, and flipped left-right with
    probability ½ (torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``).

    Draws from ``generator`` (on the CPU) only, so a seeded run augments identically everywhere.
    """
    b, c, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)  # (b, h): the rows of the padded image each keeps
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (padding, padding, padding, padding))
    index = (torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :])
    return padded[tuple(i.to(x.device) for i in index)]


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop-flip": crop_flip}


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: Callable[[int, int], float],
    momentum: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    momentum_buffers: dict[str, torch.Tensor] | None = None,
    steps: int = 0,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> TrainStats:
    """SGD with momentum and weight decay; ``lr(step, total_steps)`` gives each step's rate.

    ``augment`` transforms each training batch (e.g. :func:`crop_flip`); it draws from its own
    generator, so the data order is the same with and without it. Evaluation never augments.

    ``momentum_buffers`` (by parameter name) continue an earlier call's optimizer state; the
    returned stats carry the buffers at the end. ``steps > 0`` runs exactly that many SGD steps
    instead of ``epochs`` (passes over freshly shuffled data, the last one cut short).
    """
    if device.type == "cuda":
        # cuDNN otherwise may pick convolution backward algorithms that add in a varying order
        # (the same seed gave losses differing in the 8th digit on an H100); same config, same
        # numbers is a promise. Measured cost: docs/performance.md, GPU. (The flags are
        # process-wide: a user's cudnn.benchmark = True is switched off here.)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    n = len(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr(0, 1), momentum=momentum,
                                weight_decay=weight_decay)
    named = dict(model.named_parameters())
    for name, buf in (momentum_buffers or {}).items():
        if name in named:
            optimizer.state[named[name]]["momentum_buffer"] = buf.to(device).clone()
    generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(derive_seed(seed, Stream.AUGMENT))
    steps_per_epoch = math.ceil(n / batch_size)
    total = steps if steps > 0 else epochs * steps_per_epoch
    loss_sum, step, seen = 0.0, 0, 0
    for _ in range(math.ceil(total / max(1, steps_per_epoch))):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            if step == total:
                break
            idx = order[start:start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr(step, total)
            optimizer.zero_grad(set_to_none=True)
            batch = x[idx] if augment is None else augment(x[idx], augment_generator)
            loss = F.cross_entropy(model(batch), y[idx])
            value = float(loss.detach())
            if not math.isfinite(value):
                return TrainStats(loss=value, steps=step, examples=step * batch_size, diverged=True)
            loss.backward()
            optimizer.step()
            loss_sum += value
            step += 1
            seen += len(idx)
    buffers = {name: optimizer.state[p]["momentum_buffer"].detach().cpu()
               for name, p in named.items()
               if optimizer.state.get(p, {}).get("momentum_buffer") is not None}
    return TrainStats(loss=loss_sum / max(1, step), steps=step, examples=seen, diverged=False,
                      momentum=buffers)


def local_update(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    *,
    run_seed: int,
    client: int,
    server_round: int,
    device: torch.device,
    momentum_buffers: dict[str, torch.Tensor] | None = None,
    steps: int | None = None,
) -> TrainStats:
    """One client's local training in one round, as the run's config prescribes: its seeded data
    order and its learning rates along the whole run's schedule. The client app, the tests that
    replay a client and the benchmarks' plain loop all call this, so they train identically.

    ``steps`` overrides ``cfg.local_steps`` (a strategy may ask for a number of SGD steps).
    """

    def lr(step: int, total: int) -> float:
        progress = ((server_round - 1) + step / max(1, total)) / cfg.rounds
        return lr_at(progress, cfg.lr, cfg.lr_schedule, cfg.warmup)

    return train(model, x, y, epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=lr,
                 momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                 seed=training_seed(run_seed, client, server_round), device=device,
                 momentum_buffers=momentum_buffers,
                 steps=cfg.local_steps if steps is None else steps,
                 augment=AUGMENTATIONS.get(cfg.augment))


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in percent) in eval mode; (nan, nan) on empty data.

    ``batch_size = 0``: sized to the input (:func:`eval_batch_size`)."""
    if len(y) == 0:
        return float("nan"), float("nan")
    batch_size = eval_batch_size(batch_size, tuple(x.shape[1:]))
    was_training = model.training
    model.to(device).eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return loss_sum / len(y), 100.0 * correct / len(y)
