"""``fedbarrier barriers``: measure saved models (e.g. a run's client checkpoints) offline.

Uses the same measurement as the server-side hook (:func:`fedbarrier.measure.hook.measure_record`), on
the data the config names: ``test`` = the global test set, ``train`` = the union of every
client's local training data.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedbarrier.config import Config
from fedbarrier.data.federation import federation, server_sample
from fedbarrier.errors import UserError
from fedbarrier.learn.local import resolve_device
from fedbarrier.measure.hook import measure_record
from fedbarrier.measure.layers import layer_groups, model_stages
from fedbarrier.runtime.build import initial_model


def load_checkpoint(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` that fits the config's model, or a one-line UserError."""
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError):
        raise UserError(f"checkpoint {str(path)!r} is not a readable torch.save file of tensors "
                        "(corrupted, truncated, or not a checkpoint)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {str(path)!r} does not hold a state dict of tensors")
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        raise UserError(f"checkpoint {str(path)!r} does not match the config's model "
                        f"(missing keys {missing[:3]}, unexpected keys {unknown[:3]})")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise UserError(f"checkpoint {str(path)!r}: {key} has shape {tuple(state[key].shape)}, "
                            f"the config's model needs {tuple(ref.shape)}")
    return {k: state[k].to(ref.dtype) for k, ref in expected.items()}


def _parse_weights(text: str | None, num: int) -> list[float]:
    if not text:
        return [1.0] * num
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"--weights {text!r} must be comma-separated numbers") from None
    if len(weights) != num or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"--weights {text!r} must be {num} non-negative numbers, not all zero")
    return weights


def format_table(record: dict[str, Any]) -> str:
    """Per-layer and cumulative barriers (mean over default models) for loss and error."""
    metrics = list(record["full"])
    lines = [f"{len(record['weights'])} models, n = {record['n']}, "
             f"{record['num_evaluated']} model evaluations in {record['seconds']:.2f}s",
             "endpoint " + "  ".join(f"{m}: " + ", ".join(f"{v:.4f}" for v in record['endpoint'][m])
                                     for m in metrics),
             "full barrier  " + "  ".join(f"{m}: {record['full'][m]:+.4f}" for m in metrics), ""]
    header = f"{'layer':<28}" + "".join(f"{m + ' (mean)':>14}{m + ' (max)':>14}" for m in metrics)
    if record.get("per_layer"):
        lines += [header, "-" * len(header)]
        for layer in record["layers"]:
            row = f"{layer:<28}"
            for m in metrics:
                s = record["per_layer"][m][layer]
                row += f"{s['mean']:>+14.4f}{s['max']:>+14.4f}"
            lines.append(row)
    if record.get("shallow"):
        lines += ["", f"{'k layers averaged':<28}" + "".join(f"{'shallow ' + m:>14}{'deep ' + m:>14}"
                                                            for m in metrics)]
        for k in range(1, len(record["layers"]) + 1):
            row = f"{k:<28}"
            for m in metrics:
                row += f"{record['shallow'][m][k - 1]['mean']:>+14.4f}"
                row += f"{record['deep'][m][k - 1]['mean']:>+14.4f}"
            lines.append(row)
    return "\n".join(lines)


def measure_checkpoints(cfg: Config, paths: Sequence[Path], *, split: str = "test",
                        as_json: bool = False, weights: str | None = None) -> dict[str, Any]:
    if len(paths) < 2:
        raise UserError(f"need at least two models to measure a barrier, got {len(paths)}")
    fed = federation(cfg.data, cfg.seed)
    model = initial_model(cfg, fed)
    expected = {k: v.detach() for k, v in model.state_dict().items()}
    states = [load_checkpoint(Path(p), expected) for p in paths]
    x, y = server_sample(fed, split, list(range(fed.num_clients)), cfg.barriers.n, cfg.seed)
    record = {"models": [str(p) for p in paths], "split": split,
              **measure_record(cfg.barriers, model, layer_groups(model, x[:2]), model_stages(model),
                               states, _parse_weights(weights, len(states)), x, y, defaults=None,
                               seed=cfg.seed, device=resolve_device(cfg.train.device),
                               batch_size=cfg.train.eval_batch_size)}
    print(json.dumps(record) if as_json else format_table(record))
    return record
