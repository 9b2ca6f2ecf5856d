"""A run directory built by hand (config + client checkpoints), so no test here needs Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedbarrier.config import load_config, to_toml
from fedbarrier.runtime.build import initial_state
from fedbarrier.runtime.rundir import save_state_dict

# Two clients on generated 1x8x8 images with a narrow CNN (conv1, conv2, fc1, fc2): milliseconds.
OVERRIDES = [
    "seed=0",
    "data.dataset=synthetic",
    "data.synthetic_shape=[1, 8, 8]",
    "data.synthetic_classes=3",
    "data.synthetic_train_size=60",
    "data.synthetic_test_size=30",
    "data.partition=iid",
    "data.num_clients=2",
    "model.name=cnn",
    "model.width=4",
    "train.device=cpu",
    "barriers.n=24",
]


def make_run(path: Path, *, rounds: int = 2, same: bool = False, save: bool = True) -> Path:
    """Write ``config.toml`` and, per round r and client k, init + r * (seeded noise of client k).

    ``same``: client 1's checkpoints are copies of client 0's (B == A).
    """
    cfg = load_config(None, OVERRIDES)
    path.mkdir(parents=True)
    (path / "config.toml").write_text(to_toml(cfg))
    init = initial_state(cfg)
    gen = torch.Generator().manual_seed(123)
    steps = {k: {key: 0.05 * torch.randn(v.shape, generator=gen) for key, v in init.items()}
             for k in (0, 1)}
    for r in range(1, rounds + 1) if save else ():
        for k in (0, 1):
            step = steps[0 if same else k]
            state = {key: v + r * step[key] + 0.01 * r * r * step[key].flip(0) for key, v in init.items()}
            save_state_dict(path / "checkpoints" / f"round-{r:04d}" / f"client-{k}.pt", state)
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")
