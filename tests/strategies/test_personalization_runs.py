"""Real simulations with partial sharing: `local` is exactly local training; a user strategy given
by dotted path runs with the barrier hook. (FedPer runs end to end in tests/test_resume.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from fedbarrier.config import load_config
from fedbarrier.fl.simulation import run_experiment
from fedbarrier.runtime.build import initial_state
from tests.conftest import TINY
from tests.strategies.replay import assert_same_model, replay_round

pytestmark = pytest.mark.slow


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_strategy_is_exactly_each_clients_own_training(tmp_path):
    cfg = load_config(None, TINY + ["strategy.name=local", "output.save_client_models=true",
                                    "barriers.families=[\"full\"]"])
    run_experiment(cfg, tmp_path / "run", progress=False)
    t = cfg.train
    for pid in range(cfg.data.num_clients):
        model = replay_round(cfg, pid, initial_state(cfg), 1)
        for r in range(2, t.rounds + 1):
            replay_round(cfg, pid, model.state_dict(), r, model=model)
        saved = torch.load(tmp_path / "run" / "checkpoints" / f"round-{t.rounds:04d}" /
                           f"client-{pid}.pt", weights_only=True)
        assert_same_model(saved, model)
    last = read(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["shared_layers"] == [] and last["bytes_received"] == 0
    assert last["bytes_instrumentation"] > 0


def test_a_plugin_strategy_by_dotted_path_runs_with_the_hook(tmp_path):
    # (FedPer's own run is tests/test_resume.py's uninterrupted "fedper" run)
    plugin = load_config(None, TINY + ["strategy.name=tests.strategies.plugin:HeadOnly"])
    run_experiment(plugin, tmp_path / "plugin", progress=False)
    last = read(tmp_path / "plugin" / "metrics.jsonl")[-1]
    assert last["shared_layers"] == ["fc2"]
    barriers = read(tmp_path / "plugin" / "barriers.jsonl")
    assert {b["round"] for b in barriers} == {1, 2}
    assert "per_layer" in barriers[-1] and barriers[-1]["per_layer"]["loss"]
