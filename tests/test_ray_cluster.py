"""Joining an existing Ray cluster (`ray start --head`, then simulation.ray_address).

The cluster is the one the test session starts for every simulation test (conftest.py); here the
config alone names it, with ``RAY_ADDRESS`` unset.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from fedbarrier.config import load_config
from fedbarrier.fl.simulation import run_experiment
from tests.conftest import TINY

pytestmark = pytest.mark.slow


def test_run_joins_an_existing_cluster_and_leaves_it_running(tmp_path, monkeypatch, ray_cluster):
    ray_bin = shutil.which("ray")
    if ray_cluster is None or ray_bin is None:
        pytest.skip("no cluster started by this session (no ray command, or RAY_ADDRESS preset)")
    monkeypatch.delenv("RAY_ADDRESS")
    cfg = load_config(None, TINY + [f"simulation.ray_address={ray_cluster}"])
    run_experiment(cfg, tmp_path / "run", progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["round"] for m in metrics] == [0, 1, 2]
    status = subprocess.run([ray_bin, "status", f"--address={ray_cluster}"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, "the cluster should outlive the run"
