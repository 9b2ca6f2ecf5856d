"""Run directories: atomic records, torn lines, and what --force may replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbarrier.errors import RunAborted, UserError
from fedbarrier.runtime.rundir import RunDir, append_jsonl, read_jsonl, save_state_dict


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


# -- where a run resumes: records, server state and client state must agree ----------------------

def _run(tmp_path, rounds=4, server_states=(3, 4), client_files=None, clients=(0, 1)):
    """A run directory as a run of ``rounds`` rounds leaves it: whole records of every round,
    the server's state of ``server_states`` and each client's state files ``client_files``."""
    run = RunDir.create(tmp_path / "run")
    for r in range(rounds + 1):
        run.append_metrics({"round": r} if r == 0 else {"round": r, "clients": list(clients)})
        if r > 0:
            run.append_barriers({"round": r, "split": "test"})
    for r in server_states:  # written directly: save_server_state would prune older rounds
        save_state_dict(run.state_path(r, "global"), {"w": torch.full((2,), float(r))})
    for client, files in (client_files or {}).items():
        folder = run.path / "clients" / f"client-{client}"
        folder.mkdir(parents=True)
        for r in files:
            torch.save({"model": {}}, folder / f"round-{r:04d}.pt")
    return run


def _cut_last_line(path, keep_bytes=9):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:keep_bytes])


def test_a_whole_run_resumes_after_its_last_round(tmp_path):
    run = _run(tmp_path)
    assert run.resume_point() == (4, None) and run.last_complete_round() == 4


def test_nothing_recorded_resumes_nowhere(tmp_path):
    assert RunDir.create(tmp_path / "run").resume_point() == (-1, None)


def test_a_torn_last_record_resumes_one_round_earlier(tmp_path):
    run = _run(tmp_path)
    _cut_last_line(run.metrics_path)
    assert run.resume_point() == (3, "metrics.jsonl is damaged after round 3")


def test_records_cut_short_after_the_run_went_on_resume_from_the_start(tmp_path):
    """The issue's case: metrics.jsonl cut in round 1 while the state says round 4 is done. The
    server's state of round 0..1 is gone (it keeps its last two rounds): start again."""
    run = _run(tmp_path, client_files={0: [3, 4], 1: [3, 4]})
    lines = run.metrics_path.read_bytes().splitlines(keepends=True)
    run.metrics_path.write_bytes(lines[0] + lines[1][:20])
    point, why = run.resume_point()
    assert point == 0 and why.startswith("metrics.jsonl is damaged after round 0")
    run.truncate_after(-1)  # what resuming from round 0 does: nothing of the old attempt stays
    assert run.metrics() == [] and not list((run.path / "state").iterdir())
    assert not list((run.path / "clients").glob("client-*/*.pt"))


def test_a_missing_or_damaged_server_state_steps_back(tmp_path):
    run = _run(tmp_path)
    run.state_path(4, "global").write_bytes(b"not a torch file")
    assert run.resume_point() == (3, "the server's state of round 4 is missing or damaged")
    run.state_path(3, "global").unlink()
    point, why = run.resume_point()
    assert point == 0 and "round 3 is missing" in why and "round 1 is missing" in why


def test_damaged_barrier_records_step_back_before_their_round(tmp_path):
    run = _run(tmp_path, server_states=(2, 3, 4))
    _cut_last_line(run.barriers_path, keep_bytes=14)  # '{"round":4,"sp': round 4's record
    assert run.resume_point() == (3, "barriers.jsonl is damaged from round 4 on")
    _cut_last_line(run.barriers_path, keep_bytes=3)  # '{"r': the round is unreadable
    # the last whole record is round 3's, and a round has several: round 3 is in doubt too
    assert run.resume_point() == (2, "barriers.jsonl is damaged from round 3 on")


def test_a_client_without_the_state_it_needs_steps_back(tmp_path):
    """Client 1 trained in rounds 1-4 and keeps state, but holds only rounds 5 and 6 (records
    and server state of those were lost): resuming after round 4 would train it from scratch."""
    run = _run(tmp_path, client_files={0: [3, 4], 1: [5, 6]})
    point, why = run.resume_point()
    assert point == 0 and "client 1's state of round 4 or earlier is gone (it holds rounds [5, 6])" \
        in why


def test_a_damaged_client_state_file_steps_back(tmp_path):
    """The file client 0 would read next is cut short: it would fail (and be left out)."""
    run = _run(tmp_path, client_files={0: [3, 4], 1: [3, 4]})
    path = run.path / "clients" / "client-0" / "round-0004.pt"
    path.write_bytes(path.read_bytes()[:20])
    assert run.resume_point() == (3, "client 0's state of round 4 is damaged")


def test_clients_that_keep_no_state_need_none(tmp_path):
    assert _run(tmp_path, client_files={}).resume_point() == (4, None)


def test_rounds_out_of_order_count_as_damage(tmp_path):
    run = RunDir.create(tmp_path / "run")
    for r in (0, 0, 1):  # what an older version's resume after round 0 wrote
        run.append_metrics({"round": r})
    assert run.resume_point() == (0, "metrics.jsonl is damaged after round 0")


def test_truncate_after_drops_later_server_and_client_state(tmp_path):
    run = _run(tmp_path, server_states=(2, 3, 4), client_files={0: [2, 3, 4]})
    run.truncate_after(3)
    assert sorted(p.name for p in (run.path / "state").iterdir()) == ["global-0002.pt",
                                                                     "global-0003.pt"]
    assert sorted(p.name for p in (run.path / "clients" / "client-0").iterdir()) == [
        "round-0002.pt", "round-0003.pt"]


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"round": 0})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunAborted, match=f"cannot write {path}: No space left on device$"):
        append_jsonl(path, {"round": 1, "loss": 0.5})
    assert path.read_bytes() == before
    with pytest.raises(RunAborted, match="cannot write .*state.pt: No space left on device$"):
        save_state_dict(tmp_path / "state.pt", {"w": torch.ones(3)})
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_client_that_cannot_write_its_state_stops_the_run(tmp_path, monkeypatch):
    """Not a faulty client to leave out: the server stops the run with the path and cause."""
    import errno
    import os

    from fedbarrier.fl.client_store import ClientStore, StorageFault
    from fedbarrier.fl.round import Reply, RoundPipeline

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFault) as failed:
        ClientStore(tmp_path, 3).save(2, {"model": {"w": torch.ones(2)}})
    message = str(failed.value)
    assert message == (f"storage fault: cannot write {tmp_path}/client-3/round-0002.pt: "
                       "No space left on device")
    pipeline = RoundPipeline()
    pipeline.begin(2, {"w": torch.ones(2)}, bytes_sent=0)
    with pytest.raises(RunAborted) as stopped:  # as Flower wraps it: type and message
        pipeline.train_replies([Reply(client=3, error=f"RuntimeError: {message}"),
                                Reply(client=4, metrics={"num-examples": 1},
                                      state={"w": torch.ones(2)})])
    assert str(stopped.value) == (f"cannot write {tmp_path}/client-3/round-0002.pt: No space "
                                  "left on device (client 3, round 2)")


@pytest.fixture
def resume_without_ray(monkeypatch):
    """resume_experiment up to the simulation, which is recorded instead of run."""
    from fedbarrier.fl import simulation

    started = []
    monkeypatch.setattr(simulation, "preflight", lambda cfg: None)
    monkeypatch.setattr(simulation, "_simulate",
                        lambda cfg, run_dir, done, **kw: started.append(done))
    return started


def _with_config(run):
    from fedbarrier.config import load_config, to_toml
    from tests.conftest import TINY

    run.write_text("config.toml", to_toml(load_config(None, TINY + ["train.rounds=4"])))
    return run


def test_a_run_killed_after_round_0_starts_again_and_records_round_0_once(
        tmp_path, resume_without_ray):
    from fedbarrier.fl.simulation import resume_experiment

    run = _with_config(RunDir.create(tmp_path / "run"))
    run.append_metrics({"round": 0, "global_test_accuracy": 0.25})
    resume_experiment(run.path, progress=False)
    assert resume_without_ray == [0] and run.metrics() == []  # the new start writes round 0


def test_a_run_killed_before_any_record_starts_again(tmp_path, resume_without_ray):
    from fedbarrier.fl.simulation import resume_experiment

    run = _with_config(RunDir.create(tmp_path / "run"))
    resume_experiment(run.path, progress=False)
    assert resume_without_ray == [0]


def test_resuming_earlier_than_recorded_says_why(tmp_path, resume_without_ray, capsys):
    from fedbarrier.fl.simulation import resume_experiment

    run = _with_config(_run(tmp_path, rounds=3, server_states=(2, 3)))
    _cut_last_line(run.metrics_path)
    resume_experiment(run.path, progress=False)
    assert resume_without_ray == [2] and [m["round"] for m in run.metrics()] == [0, 1, 2]
    assert capsys.readouterr().err == (f"resuming {run.path} after round 2, not later: "
                                       "metrics.jsonl is damaged after round 2\n")
