"""kill -9 in the middle of a run, then --resume: the records equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fedbarrier.config import load_config, to_toml
from fedbarrier.errors import UserError
from fedbarrier.fl.simulation import resume_experiment, run_experiment
from fedbarrier.runtime.rundir import RunDir, without_timings
from strategies.feddc import DAISY, feddc_step
from tests.conftest import ON_RAY, TINY, kill_processes_matching, tensorboard_scalars

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Personal layers and persistent momentum: resume must restore client-side state too.
RESUMABLE = TINY + ["train.rounds=4", "train.local_epochs=3", "strategy.name=fedper",
                    "train.keep_optimizer_state=true"]
# Daisy-chaining after rounds 1-3: the models to hand over are server state too.
DAISY_CHAINED = TINY + ["train.rounds=5", "train.local_epochs=3", "strategy.name=feddc",
                        "strategy.daisy_period=1", "strategy.aggregation_period=4"]
# Cross-device: 400 clients, 4 sampled per round, personal layers kept by the clients that were
# sampled (the scale issue's determinism and resume, at a size CI affords).
CROSS_DEVICE = TINY + ["train.rounds=4", "strategy.name=fedper", "data.num_clients=400",
                       "data.partition=iid", "data.min_partition_size=0",
                       "data.synthetic_train_size=2400", "strategy.clients_per_round=4",
                       "strategy.fraction_evaluate=0.01", "train.keep_optimizer_state=true"]
CONFIGS = {"fedper": RESUMABLE, "feddc": DAISY_CHAINED, "cross-device": CROSS_DEVICE}


def records(path: Path) -> list[dict]:
    return [without_timings(json.loads(line)) for line in path.read_text().splitlines()]


def first_difference(a, b, path: str = "") -> str:
    """Where two JSON-like values first differ, as a path and the two values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} != {b!r}"


def start_cli_run(tmp_path: Path, cfg, run: Path, prefix: str, stderr, quiet: bool = True,
                  private_ray: bool = False) -> tuple[subprocess.Popen, Path]:
    """`fedbarrier run` in its own session, with Ray's files under a short private temp folder.

    Ray's processes carry that folder's path, so the test can find and kill them; it is short
    because Ray's unix socket paths must stay under 107 characters. Without ``quiet`` the run
    prints a progress line to stderr as each round is recorded. With ``private_ray`` the run
    starts its own Ray instance (in that folder) instead of joining the tests' cluster.
    """
    config_file = tmp_path / "exp.toml"
    config_file.write_text(to_toml(cfg))
    private_tmp = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "TMPDIR": str(private_tmp), "PYTHONPATH": str(ROOT)}
    if private_ray:
        env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "fedbarrier", "run", str(config_file),
                             "--out", str(run), *(["--quiet"] if quiet else [])], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)
    return proc, private_tmp


def ray_driver_log(private_tmp: Path, chars: int = 3000) -> str:
    """The end of the stopped run's Ray driver and raylet logs, for a failure message: why a
    driver ended otherwise than the test expects is written there, not to its stderr."""
    # The run's scratch folder (inside private_tmp) holds Ray's session; a driver that ended
    # without its clean-up leaves it there.
    logs = sorted(private_tmp.rglob("python-core-driver-*.log"))
    logs += sorted(private_tmp.rglob("raylet.out")) + sorted(private_tmp.rglob("gcs_server.out"))
    return "".join(f"\n--- {log.name}:\n{log.read_text(errors='replace')[-chars:]}"
                   for log in logs)


def left_behind(private_tmp: Path) -> str:
    """The processes of a stopped run's private Ray still alive after 10 s (Ray's helpers exit
    as their raylet goes); then they are killed and the folder removed, whatever the answer."""
    deadline = time.monotonic() + 10
    while (leftover := subprocess.run(["pgrep", "-f", str(private_tmp)], capture_output=True,
                                      text=True)).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_processes_matching(str(private_tmp))
    shutil.rmtree(private_tmp, ignore_errors=True)
    return leftover.stdout.strip()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``uninterrupted(name)``: the uninterrupted run of ``CONFIGS[name]``, made once for the
    module (tests only read it)."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = tmp_path_factory.mktemp(name) / "reference"
            run_experiment(load_config(None, CONFIGS[name]), made[name], progress=False)
        return made[name]

    return get


# Tests that read the same uninterrupted run share a process (xdist group), the others spread.
@pytest.mark.parametrize("name", [pytest.param("fedper", marks=pytest.mark.xdist_group("fedper")),
                                  "feddc", "cross-device"])
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, name, uninterrupted):
    cfg = load_config(None, CONFIGS[name])
    reference = uninterrupted(name)
    if name == "fedper":  # all but the head travel (FedPer); instrumentation is counted apart
        last = records(reference / "metrics.jsonl")[-1]
        assert last["shared_layers"] == ["conv1", "conv2", "fc1"]
        assert 0 < last["bytes_received"] and last["bytes_instrumentation"] > 0

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
    kill_processes_matching(str(private_tmp))
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
    # TensorBoard: the same scalars at the same steps, none twice (timings aside)
    resumed_events, reference_events = tensorboard_scalars(run), tensorboard_scalars(reference)
    assert sorted(resumed_events) == sorted(reference_events)
    for tag, points in reference_events.items():
        steps = [step for step, _ in resumed_events[tag]]
        assert steps == [step for step, _ in points], tag
        if not tag.startswith("time/"):
            assert resumed_events[tag] == points, tag
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # killed, resumed
    info = json.loads((run / "run.json").read_text())
    assert {k: v for k, v in info.items() if k != "resumes"} == started
    [resumed] = info["resumes"]
    assert resumed["after_round"] == done_at_kill and resumed["torch"] == started["torch"]
    assert resumed["command"] != started["command"]  # the CLI started it; this test resumed it


@pytest.mark.xdist_group("fedper")
def test_resume_refuses_a_different_config_and_finished_runs(uninterrupted):
    run = uninterrupted("fedper")
    other = load_config(None, RESUMABLE + ["data.alpha=2"])
    with pytest.raises(UserError, match="different config .*data.alpha"):
        resume_experiment(run, other, progress=False)
    before = (run / "metrics.jsonl").read_text()
    resume_experiment(run, load_config(None, RESUMABLE), progress=False)  # complete: nothing to do
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_cleanly_shuts_ray_down_and_leaves_a_resumable_run(tmp_path, sig, code):
    """Sent to the whole process group, as a terminal's Ctrl-C or SLURM's SIGTERM is: Ray's
    processes get it too. One line says what happens and one how to resume; no traceback."""
    cfg = load_config(None, RESUMABLE + ON_RAY)
    run = tmp_path / "run"
    proc, private_tmp = start_cli_run(tmp_path, cfg, run, "fbc-", subprocess.PIPE, quiet=False,
                                      private_ray=True)
    # The signal goes when the progress line of round 1 appears (the server prints it once the
    # round is recorded): mid-run, with rounds 2-4 and the shutdown still to come.
    lines: list[str] = []
    round_1 = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if re.match(r"round\s+1/", line):
                round_1.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not round_1.wait(0.05) and proc.poll() is None and time.monotonic() < deadline:
        pass
    finished = proc.poll() is not None or any(re.match(r"round\s+4/4", line) for line in lines)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    reader.join(timeout=30)
    stderr = "".join(lines)
    assert round_1.is_set() and not finished, f"the signal did not land mid-run:\n{stderr[-3000:]}"
    assert proc.returncode == code, stderr[-3000:] + ray_driver_log(private_tmp)
    # After round 1's line (and round 2's, if it was recorded before the signal landed):
    said = [line.rstrip("\n") for line in lines[next(i for i, line in enumerate(lines)
                                                      if re.match(r"round\s+1/", line)) + 1:]
            if line.strip() and not re.match(r"round\s+\d+/", line)]
    assert said == [
        f"{sig.name}: stopping; the round in progress is dropped "
        f"({'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'} again to stop at once)",
        f"interrupted by {sig.name}; resume with: fedbarrier run --resume {run}"], stderr[-3000:]
    assert left_behind(private_tmp) == "", f"Ray processes survived {sig.name}"
    rounds = [r["round"] for r in records(run / "metrics.jsonl")]
    assert rounds == list(range(len(rounds))) and RunDir(run).last_complete_round() == rounds[-1]
    # That records stopped this way resume to the uninterrupted numbers is checked without
    # signals or Ray below (test_a_stop_asked_while_measuring_or_writing_drops_only_the_next_round
    # stops with SIGTERM's request) and after kill -9 above.


@pytest.fixture
def interrupts(monkeypatch):
    """cli.main in this process: a fresh interrupt flag, and os._exit raising SystemExit."""
    from fedbarrier import cli

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(cli, "_interrupted", threading.Event())
    monkeypatch.setattr(cli.os, "_exit", exit_now)
    previous = signal.getsignal(signal.SIGINT)
    yield cli
    assert signal.getsignal(signal.SIGINT) is previous  # main restores the handler


def test_an_interrupt_that_a_library_swallows_still_exits_130(interrupts, monkeypatch, capsys):
    """Where Flower, Ray or torch catch the KeyboardInterrupt (a __del__, an exit handler, a
    finally that raises something else), the command returns normally: still 130, not 0."""
    def run_that_swallows(args) -> int:
        try:
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)  # the handler runs before this returns
        except KeyboardInterrupt:
            pass
        return 0

    monkeypatch.setattr(interrupts, "cmd_run", run_that_swallows)
    with pytest.raises(SystemExit) as exited:
        interrupts.main(["run", "--resume", "runs/x"])
    assert exited.value.code == 130
    assert "interrupted; resume with: fedbarrier run --resume runs/x" in capsys.readouterr().err


def test_an_interrupt_that_becomes_another_error_still_exits_130(interrupts, monkeypatch):
    def run_that_wraps(args) -> int:
        try:
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt as exc:  # as Flower's engine does with exceptions it sees
            raise RuntimeError("Simulation Runtime crashed.") from exc
        return 0

    monkeypatch.setattr(interrupts, "cmd_run", run_that_wraps)
    with pytest.raises(SystemExit) as exited:
        interrupts.main(["run", "--resume", "runs/x"])
    assert exited.value.code == 130


def test_errors_without_an_interrupt_are_unchanged(interrupts, monkeypatch):
    def run_that_fails(args) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(interrupts, "cmd_run", run_that_fails)
    with pytest.raises(RuntimeError, match="a bug"):
        interrupts.main(["run", "--resume", "runs/x"])


# The executable with a command that has finished, and SIGINT raised in an exit handler (torch's
# weakref finalizers run there): registered after the CLI's own, so run before it; or before it,
# so run after the CLI's last one. Python prints and ignores a KeyboardInterrupt in an exit
# handler, and drops a signal whose handler it no longer runs: both used to exit 0.
EXIT_HANDLER_SCRIPT = """
import atexit, signal, sys
from fedbarrier import cli

when = sys.argv[1]
if when == "last":
    atexit.register(signal.raise_signal, signal.SIGINT)

def command(args):
    if when == "during":
        atexit.register(signal.raise_signal, signal.SIGINT)
    print("done", flush=True)
    return 0

cli.cmd_keys = command
sys.argv = ["fedbarrier", "keys"]
cli.console()
"""


@pytest.mark.parametrize("when, returncode", [("during", 130), ("last", -signal.SIGINT)])
def test_a_ctrl_c_while_the_executable_exits_never_exits_0(tmp_path, when, returncode):
    script = tmp_path / "exiting.py"
    script.write_text(EXIT_HANDLER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), when], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout == "done\n"
    assert done.returncode == returncode, done.stderr[-2000:]


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{where}'"],
                           capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_stops_with_one_line_and_the_moved_folder_resumes(tmp_path, uninterrupted):
    """The run folder on a 2.6 MB tmpfs (its own mount namespace): a write fails in round 2
    (a client's state, here), the run stops with the path and the cause, and the folder, moved
    to a disk with room, resumes to the uninterrupted run's numbers."""
    small = tmp_path / "small"
    small.mkdir()
    if not _can_mount_tmpfs(small):
        pytest.skip("needs unshare and mount (root or user namespaces)")
    config = tmp_path / "exp.toml"
    config.write_text(to_toml(load_config(None, RESUMABLE)))
    moved = tmp_path / "moved"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the namespace's own Ray
    env["PYTHONPATH"] = str(ROOT)
    script = ('mount -t tmpfs -o size=2600k tmpfs "$1" && "$2" -m fedbarrier run "$3" --out "$1/run"'
              ' --quiet; code=$?; cp -a "$1/run" "$4"; exit $code')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(small), sys.executable,
                           str(config), str(moved)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    [line] = done.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: cannot write {small}/run/\S+: No space left on device.*; once "
                        rf"that is fixed, resume with: fedbarrier run --resume {small}/run", line)
    recorded = len(records(moved / "metrics.jsonl")) - 1
    assert 1 <= recorded < 4, line  # stopped mid-run, after round 1
    resume_experiment(moved, progress=False)
    reference = uninterrupted("fedper")
    assert records(moved / "metrics.jsonl") == records(reference / "metrics.jsonl")
    assert records(moved / "barriers.jsonl") == records(reference / "barriers.jsonl"), \
        first_difference(records(moved / "barriers.jsonl"), records(reference / "barriers.jsonl"))


@pytest.mark.xdist_group("fedper")
def test_a_damaged_record_resumes_where_everything_agrees_and_equals_the_uninterrupted_run(
        tmp_path, uninterrupted, capsys):
    """metrics.jsonl cut in the middle of round 3's line, as a copy cut short leaves it, while
    the server's and the clients' state say round 4 is done (they keep their last two rounds):
    no round after 0 has all three, so the run starts again, and stale later client state
    must not feed it (it made a resumed client prune its fresh state)."""
    reference = uninterrupted("fedper")
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:40])
    resume_experiment(run, progress=False)
    assert "resuming" in capsys.readouterr().err  # says it goes back, and why
    assert records(run / "metrics.jsonl") == records(reference / "metrics.jsonl")
    assert records(run / "barriers.jsonl") == records(reference / "barriers.jsonl")


@pytest.mark.parametrize("after", [1.0, 8.0], ids=["loading", "starting-ray"])
def test_a_signal_during_start_up_exits_130_without_traceback(tmp_path, after):
    """Before the first round: while Python imports and checks, or while Ray starts (the
    run's graceful stop is already listening, the server not yet asking)."""
    cfg = load_config(None, RESUMABLE + ON_RAY)
    run = tmp_path / "run"
    proc, private_tmp = start_cli_run(tmp_path, cfg, run, "fbs-", subprocess.PIPE,
                                      private_ray=True)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    leftover = left_behind(private_tmp)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted"), stderr[-3000:]
    assert leftover == "", "Ray processes survived"


@pytest.mark.parametrize("where", ["measuring", "writing"])
def test_a_stop_asked_while_measuring_or_writing_drops_only_the_next_round(
        tmp_path, monkeypatch, uninterrupted, where):
    """The stop request lands (as a signal's handler would make it) while round 2's barriers are
    measured, or right after round 1's record is written: the round in progress is dropped at
    the server's next wait, whatever it had written, and the resumed run equals an
    uninterrupted one."""
    from fedbarrier.errors import RunInterrupted
    from fedbarrier.fl.recorders import MetricsRecorder
    from fedbarrier.measure.hook import BarrierHook
    from fedbarrier.runtime import stopping

    if where == "measuring":
        measure = BarrierHook.measure

        def measure_then_stop(self, models):
            if models.server_round == 2:
                stopping.request_stop(signal.SIGINT)
            return measure(self, models)

        monkeypatch.setattr(BarrierHook, "measure", measure_then_stop)
    else:
        record = MetricsRecorder.on_round_end

        def record_then_stop(self, rec):
            record(self, rec)
            if rec.round == 1:
                stopping.request_stop(signal.SIGTERM)

        monkeypatch.setattr(MetricsRecorder, "on_round_end", record_then_stop)
    run = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        run_experiment(load_config(None, RESUMABLE), run, progress=False)
    assert [r["round"] for r in records(run / "metrics.jsonl")] == [0, 1]
    monkeypatch.undo()
    resume_experiment(run, progress=False)
    reference = uninterrupted("fedper")
    assert records(run / "metrics.jsonl") == records(reference / "metrics.jsonl")
    assert records(run / "barriers.jsonl") == records(reference / "barriers.jsonl")


def test_a_ctrl_c_while_torch_loads_waits_for_the_import_to_end(interrupts):
    """A KeyboardInterrupt raised inside a C extension's initialization aborted the process
    (status -6, a C++ stack dump); inside the block it is remembered and raised at its end."""
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupts_deferred():
            previous = signal.signal(signal.SIGINT, interrupts._interrupt)
            try:
                signal.raise_signal(signal.SIGINT)  # the handler runs before this returns
                reached.append("the rest of the import")
            finally:
                signal.signal(signal.SIGINT, previous)
    assert reached == ["the rest of the import"] and interrupts._interrupted.is_set()
