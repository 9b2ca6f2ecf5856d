"""The paper's analyses beyond barriers (Adilova et al., ICLR 2024, arXiv 2307.06966, Section 5).

- :mod:`fedbarrier.analysis.robustness`: move one layer of model A halfway to B versus halfway to a
  random point at the same distance (BARRIERS.md, "Random direction of the same size").
- :mod:`fedbarrier.analysis.subspace`: noise of norm sigma in the training subspace, in its
  orthogonal complement and along the interpolation direction (BARRIERS.md, "Subspaces").
- :mod:`fedbarrier.analysis.deep_linear`: the hand-checkable deep linear network of BARRIERS.md.

This module holds what the first two share: flattening a set of state-dict keys into one float64
vector and back (variants swap tensors, never deep-copy a model) and reading a run directory's
config, client checkpoints and evaluation data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedbarrier.config import Config, load_config
from fedbarrier.data.federation import federation, server_sample
from fedbarrier.errors import UserError
from fedbarrier.learn.local import resolve_device
from fedbarrier.measure.evaluator import ModelEvaluator
from fedbarrier.measure.layers import Stage, layer_groups, model_stages
from fedbarrier.offline import load_checkpoint
from fedbarrier.runtime.build import initial_model
from fedbarrier.runtime.rundir import json_ready  # noqa: F401 (re-exported for the analyses)

StateDict = Mapping[str, torch.Tensor]
METRICS = ("loss", "error")
RERUN_HINT = "rerun it with --set output.save_client_models=true"


# --------------------------------------------------------------------------------------- vectors
def float_keys(state: StateDict, keys: Iterable[str]) -> list[str]:
    """The floating-point keys among ``keys`` (integer buffers are never perturbed)."""
    return [k for k in keys if state[k].is_floating_point()]


def flatten(state: StateDict, keys: Sequence[str]) -> torch.Tensor:
    """The tensors of ``keys``, flattened and concatenated in order, as one float64 vector."""
    if not keys:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in keys])


def with_vector(state: StateDict, keys: Sequence[str], vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """``state`` with ``keys`` replaced by consecutive slices of ``vector`` (the inverse of
    :func:`flatten`), each in its original dtype and device. Other keys keep their tensor objects."""
    out = dict(state)
    start = 0
    for k in keys:
        ref = state[k]
        out[k] = vector[start:start + ref.numel()].reshape(ref.shape).to(ref.dtype).to(ref.device)
        start += ref.numel()
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries for {start} coordinates")
    return out


# ------------------------------------------------------------------------------------ run folder
_ROUND = re.compile(r"round-(\d+)$")
_CLIENT = re.compile(r"client-(\d+)\.pt$")


def saved_rounds(run_dir: Path) -> dict[int, list[int]]:
    """``{round: [client ids]}`` of the client checkpoints under ``RUN_DIR/checkpoints``."""
    out: dict[int, list[int]] = {}
    root = run_dir / "checkpoints"
    for folder in sorted(root.glob("round-*")) if root.is_dir() else []:
        match = _ROUND.search(folder.name)
        clients = sorted(int(m.group(1)) for f in folder.glob("client-*.pt")
                         if (m := _CLIENT.search(f.name)))
        if match and clients:
            out[int(match.group(1))] = clients
    return out


def parse_clients(text: str) -> tuple[int, int]:
    """'0,1' -> (0, 1): the two client ids A and B, or a one-line UserError."""
    try:
        ids = [int(c) for c in text.split(",")]
    except ValueError:
        raise UserError(f"--clients {text!r} must be two comma-separated client ids, e.g. 0,1") from None
    if len(ids) != 2 or ids[0] == ids[1] or min(ids) < 0:
        raise UserError(f"--clients {text!r} must name two different client ids, e.g. 0,1")
    return ids[0], ids[1]


@dataclass
class RunModels:
    """Two clients' saved models of one run, with everything needed to score variants of them."""

    run_dir: Path
    cfg: Config
    round: int
    clients: tuple[int, int]
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    model: nn.Module  # the module variants are swapped into
    groups: dict[str, list[str]]  # ordered layers, input to output
    stages: list[Stage]  # activation-sharing stages (fedbarrier.measure.layers.model_stages)
    x: torch.Tensor
    y: torch.Tensor
    split: str
    device: torch.device

    def evaluator(self) -> ModelEvaluator:
        """A :class:`fedbarrier.measure.evaluator.ModelEvaluator` on this run's fixed data sample."""
        return ModelEvaluator(self.model, self.x, self.y, stages=self.stages,
                              share_activations=self.cfg.barriers.share_activations,
                              batch_size=self.cfg.train.eval_batch_size, device=self.device)

    def checkpoint(self, server_round: int, client: int) -> dict[str, torch.Tensor]:
        """Client ``client``'s saved model of ``server_round`` (shapes checked against the config)."""
        expected = {k: v.detach() for k, v in self.model.state_dict().items()}
        return load_checkpoint(checkpoint_path(self.run_dir, server_round, client), expected)


def checkpoint_path(run_dir: Path, server_round: int, client: int) -> Path:
    return run_dir / "checkpoints" / f"round-{server_round:04d}" / f"client-{client}.pt"


def load_run(run_dir: str | Path, *, server_round: int | None, clients: tuple[int, int],
             split: str, n: int | None) -> RunModels:
    """Read ``RUN_DIR/config.toml`` and clients A, B's checkpoints of ``server_round`` (default:
    the last round saved for both), and draw the evaluation sample the barrier hook would use
    (``test``: the global test set; ``train``: the union of A's and B's training data)."""
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise UserError(f"{str(run)!r} is not a run directory (no config.toml)")
    cfg = load_config(run / "config.toml")
    rounds = saved_rounds(run)
    if not rounds:
        raise UserError(f"run {str(run)!r} has no saved client models (checkpoints/round-NNNN/"
                        f"client-K.pt); {RERUN_HINT}")
    both = sorted(r for r, ids in rounds.items() if set(clients) <= set(ids))
    if server_round is None:
        if not both:
            raise UserError(f"run {str(run)!r} has no round with checkpoints of both clients "
                            f"{clients[0]} and {clients[1]}; saved: {_describe(rounds)}")
        server_round = both[-1]
    elif server_round not in both:
        raise UserError(f"run {str(run)!r} has no checkpoints of clients {clients[0]} and "
                        f"{clients[1]} in round {server_round}; saved: {_describe(rounds)}")
    fed = federation(cfg.data, cfg.seed)
    if max(clients) >= fed.num_clients:
        raise UserError(f"--clients: the run has clients 0..{fed.num_clients - 1}")
    pool = list(clients) if split == "train" else list(range(fed.num_clients))
    x, y = server_sample(fed, split, pool, cfg.barriers.n if n is None else n, cfg.seed)
    model = initial_model(cfg, fed)
    out = RunModels(run_dir=run, cfg=cfg, round=server_round, clients=clients, a={}, b={},
                    model=model, groups=layer_groups(model, x[:2]), stages=model_stages(model),
                    x=x, y=y, split=split, device=resolve_device(cfg.train.device))
    out.a = out.checkpoint(server_round, clients[0])
    out.b = out.checkpoint(server_round, clients[1])
    return out


def _describe(rounds: Mapping[int, list[int]]) -> str:
    shown = [f"round {r}: clients {','.join(map(str, ids))}" for r, ids in list(rounds.items())[:4]]
    return "; ".join(shown) + ("; ..." if len(rounds) > 4 else "")
