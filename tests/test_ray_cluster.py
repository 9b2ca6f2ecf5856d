"""Joining an existing Ray cluster (`ray start --head`, then simulation.ray_address)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from fedbarrier.config import load_config
from fedbarrier.fl.simulation import run_experiment
from tests.conftest import TINY

pytestmark = pytest.mark.slow
PORT = 6391  # not Ray's default, so a developer's own cluster is left alone


def test_run_joins_an_existing_cluster_and_leaves_it_running(tmp_path):
    ray_bin = shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray command is not installed")
    temp = Path(tempfile.mkdtemp(prefix="fbc-"))  # short: Ray's socket paths are limited
    start = subprocess.run(
        [ray_bin, "start", "--head", f"--port={PORT}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=false",
         "--disable-usage-stats"], capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        cfg = load_config(None, TINY + [f"simulation.ray_address=127.0.0.1:{PORT}"])
        run_experiment(cfg, tmp_path / "run", progress=False)
        metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
        assert [m["round"] for m in metrics] == [0, 1, 2]
        status = subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{PORT}"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, "the cluster should outlive the run"
    finally:
        # `ray stop` would stop every Ray on the machine; end only this cluster's processes.
        out = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True).stdout
        for pid in out.split():
            subprocess.run(["kill", "-9", pid], check=False)
        shutil.rmtree(temp, ignore_errors=True)
