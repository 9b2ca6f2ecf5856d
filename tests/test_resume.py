"""kill -9 in the middle of a run, then --resume: the records equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedbarrier.config import load_config, to_toml
from fedbarrier.errors import UserError
from fedbarrier.fl.simulation import resume_experiment, run_experiment
from strategies.feddc import DAISY, feddc_step
from tests.conftest import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TIMINGS = {"wall_seconds", "seconds", "barrier_seconds_train", "barrier_seconds_test"}
# Personal layers and persistent momentum: resume must restore client-side state too.
RESUMABLE = TINY + ["train.rounds=4", "train.local_epochs=3", "strategy.name=fedper",
                    "train.keep_optimizer_state=true"]
# Daisy-chaining after rounds 1-3: the models to hand over are server state too.
DAISY_CHAINED = TINY + ["train.rounds=5", "train.local_epochs=3", "strategy.name=feddc",
                        "strategy.daisy_period=1", "strategy.aggregation_period=4"]


def records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in path.read_text().splitlines()]


def kill_tree_matching(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (Ray's helpers included)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_cli_run(tmp_path: Path, cfg, run: Path, prefix: str, stderr) -> tuple[subprocess.Popen, Path]:
    """`fedbarrier run` in its own session, with Ray's files under a short private temp folder.

    Ray's processes carry that folder's path, so the test can find and kill them; it is short
    because Ray's unix socket paths must stay under 107 characters.
    """
    config_file = tmp_path / "exp.toml"
    config_file.write_text(to_toml(cfg))
    private_tmp = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "TMPDIR": str(private_tmp), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fedbarrier", "run", str(config_file),
                             "--out", str(run), "--quiet"], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)
    return proc, private_tmp


@pytest.mark.parametrize("overrides", [RESUMABLE, DAISY_CHAINED], ids=["fedper", "feddc"])
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, overrides):
    cfg = load_config(None, overrides)
    reference = tmp_path / "reference"
    run_experiment(cfg, reference, progress=False)

    run = tmp_path / "killed"
    proc, private_tmp = start_cli_run(tmp_path, cfg, run, "fbk-", open(tmp_path / "stderr.txt", "w"))
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # rounds 0 and 1
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_tree_matching(str(private_tmp))
    shutil.rmtree(private_tmp, ignore_errors=True)
    assert metrics.exists(), (tmp_path / "stderr.txt").read_text()[-2000:]
    done_at_kill = len(metrics.read_text().splitlines()) - 1
    assert 1 <= done_at_kill < cfg.train.rounds, "the kill should land mid-run"
    if cfg.strategy.name == "feddc":  # the first resumed round must be a hand-over
        assert feddc_step(done_at_kill, 1, 4) == DAISY, done_at_kill

    started = json.loads((run / "run.json").read_text())
    resume_experiment(run, progress=False)
    assert records(run / "metrics.jsonl") == records(reference / "metrics.jsonl")
    assert records(run / "barriers.jsonl") == records(reference / "barriers.jsonl")
    info = json.loads((run / "run.json").read_text())
    assert {k: v for k, v in info.items() if k != "resumes"} == started
    [resumed] = info["resumes"]
    assert resumed["after_round"] == done_at_kill and resumed["torch"] == started["torch"]
    assert resumed["command"] != started["command"]  # the CLI started it; this test resumed it


def test_resume_refuses_a_different_config_and_finished_runs(tmp_path):
    cfg = load_config(None, TINY + ["train.rounds=1", "barriers.enabled=false"])
    run = tmp_path / "run"
    run_experiment(cfg, run, progress=False)
    other = load_config(None, TINY + ["train.rounds=1", "barriers.enabled=false", "data.alpha=2"])
    with pytest.raises(UserError, match="different config .*data.alpha"):
        resume_experiment(run, other, progress=False)
    before = (run / "metrics.jsonl").read_text()
    resume_experiment(run, cfg, progress=False)  # complete: nothing to do
    assert (run / "metrics.jsonl").read_text() == before


def test_ctrl_c_stops_cleanly_shuts_ray_down_and_leaves_a_resumable_run(tmp_path):
    cfg = load_config(None, RESUMABLE)
    run = tmp_path / "run"
    proc, private_tmp = start_cli_run(tmp_path, cfg, run, "fbc-", subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"resume with: fedbarrier run --resume {run}" in stderr
    time.sleep(2)
    leftover = subprocess.run(["pgrep", "-f", str(private_tmp)], capture_output=True, text=True)
    kill_tree_matching(str(private_tmp))
    shutil.rmtree(private_tmp, ignore_errors=True)
    assert leftover.stdout.strip() == "", "Ray processes survived Ctrl-C"
    resume_experiment(run, progress=False)
    assert [r["round"] for r in records(run / "metrics.jsonl")] == [0, 1, 2, 3, 4]
