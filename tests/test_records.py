"""Run directories: atomic records, torn lines, and what --force may replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbarrier.errors import UserError
from fedbarrier.runtime.rundir import RunDir, append_jsonl, read_jsonl


def test_force_replaces_every_trace_of_the_previous_run(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.append_metrics({"round": 1})
    for stale in ("clients/client-0/round-0040.pt", "state/global-0040.pt",
                  "checkpoints/round-0040/client-0.pt", "plots/x.png"):
        (run.path / stale).parent.mkdir(parents=True, exist_ok=True)
        (run.path / stale).write_bytes(b"old")
    with pytest.raises(UserError, match="already holds a run"):
        RunDir.create(run.path)
    RunDir.create(run.path, force=True)
    assert list(run.path.iterdir()) == []


def test_force_refuses_to_empty_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="holds no run"):
        RunDir.create(tmp_path, force=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_a_torn_last_line_is_ignored_and_non_finite_values_become_null(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"round": 1, "loss": float("nan")})
    with open(path, "a") as fh:
        fh.write('{"round": 2, "lo')  # a crash in the middle of a write
    assert read_jsonl(path) == [{"round": 1, "loss": None}]


def test_truncate_after_drops_later_rounds_and_checkpoints(tmp_path):
    run = RunDir.create(tmp_path / "run")
    for r in (0, 1, 2, 3):
        run.append_metrics({"round": r})
        run.append_barriers({"round": r, "split": "test"})
    (run.path / "checkpoints" / "round-0003").mkdir(parents=True)
    (run.path / "checkpoints" / "round-0003" / "client-0.pt").write_bytes(b"x")
    run.truncate_after(2)
    assert [m["round"] for m in run.metrics()] == [0, 1, 2]
    assert [b["round"] for b in run.barriers()] == [0, 1, 2]
    assert not (run.path / "checkpoints" / "round-0003").exists()


def test_strategy_state_is_json_unless_it_holds_tensors(tmp_path):
    run = RunDir.create(tmp_path / "run")
    model = {"w": torch.ones(2)}
    run.save_server_state(3, model, {"round": 3, "shared": ["conv1"]})
    assert (run.path / "state" / "strategy-0003.json").exists()
    assert run.load_server_state(3)[1] == {"round": 3, "shared": ["conv1"]}
    # The same round saved again (a resumed attempt) with tensors: only the new file counts.
    run.save_server_state(3, model, {"round": 3, "handover": {"1": {"model": model}}})
    assert not (run.path / "state" / "strategy-0003.json").exists()
    state = run.load_server_state(3)[1]
    assert torch.equal(state["handover"]["1"]["model"]["w"], torch.ones(2))
    run.save_server_state(3, model, {"round": 3})
    assert run.load_server_state(3)[1] == {"round": 3}


def test_a_strategy_state_that_resume_could_not_read_fails_when_saved(tmp_path):
    run = RunDir.create(tmp_path / "run")
    model = {"w": torch.ones(2)}
    # numpy values become numbers and tensors that torch.load(weights_only=True) reads back
    run.save_server_state(1, model, {"m": model, "lr": np.float64(0.5), "seen": np.arange(3)})
    state = run.load_server_state(1)[1]
    assert state["lr"] == 0.5 and torch.equal(state["seen"], torch.arange(3))
    with pytest.raises(TypeError, match=r"state_dict\(\)\['x'\] holds a set"):
        run.save_server_state(2, model, {"m": model, "x": {1, 2}})
