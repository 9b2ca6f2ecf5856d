"""The same ClientApp and ServerApp under Flower's Deployment Engine, end to end.

A SuperLink and two SuperNodes (partition-id 0 and 1) on loopback, on free ports, and
``flwr run <app> <connection> --stream`` against the SuperLink's Control API: the route to a real
federation. Under deployment the server holds no client data, so the barriers are the local ones,
measured by the clients on their own data (``barriers.splits`` holds only local splits): only
numbers leave a client.

Flower's state stays in temporary folders: ``FLWR_HOME`` (where the ``flwr`` CLI reads
``config.toml`` and the SuperLink/SuperNodes install the app bundle) and the SuperLink database.
``flwr run`` builds the bundle (FAB) from a clean temporary copy of the app (pyproject.toml, the
three packages and the experiment configs): it neither picks up the repository's run folders nor
rewrites its pyproject.toml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
APP_PACKAGES = ("fedbarrier", "strategies", "partitions")
CONNECTION = "fedbarrier-test"
RUN_TIMEOUT = 300  # seconds; about 40-100 s on a shared 2-core machine, mostly process start-ups

EXPERIMENT = """\
seed = 0

[data]
dataset = "synthetic"
synthetic_shape = [1, 8, 8]
synthetic_classes = 4
synthetic_train_size = 240
synthetic_test_size = 80
synthetic_noise = 3.0
num_clients = 2
min_partition_size = 20

[train]
rounds = 1  # each ClientApp message starts a process (~5 s of imports and data): one round of each

[strategy]
fraction_evaluate = 0.0  # no accuracy messages: the clients get messages for local barriers only

[barriers]
splits = ["local-train", "local-test"]  # measured by the clients: the server has no client data
local_n = 40

[output]
plots = false
"""
OVERRIDES = "train.batch_size=16;barriers.curve_points=5"  # exercises the run config's `set`


def _cli(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} not found: flwr is a dependency of fedbarrier and installs it")
    return found


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):  # held open together, so the ports differ
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _descendants(roots: list[int]) -> set[int]:
    """Every process below ``roots`` (Linux /proc), including those in sessions of their own."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie is dead, only not yet reaped


def _signal_all(pids: set[int], sig: int) -> None:
    """Signal the process groups led by ``pids`` (all started by this test), or else the pids."""
    for pid in pids:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):  # not a group leader
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _stop(procs: list[subprocess.Popen]) -> set[int]:
    """End the SuperLink, the SuperNodes and everything they started.

    Each was started in a session of its own, so it leads its process group; the SuperLink's
    flower-superexec starts yet another session (flwr-serverapp runs in it), hence the walk over
    descendants, collected before anything is signalled.
    """
    pids = {p.pid for p in procs} | _descendants([p.pid for p in procs])
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        for p in procs:
            p.poll()  # reap the direct children
        time.sleep(0.2)
    _signal_all({pid for pid in pids if _alive(pid)}, signal.SIGKILL)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
    return {pid for pid in pids if _alive(pid)}


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(folder.iterdir()))


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"flower-superlink exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"flower-superlink did not listen on port {port}:\n{_tail(log)}")


def _make_app(dest: Path) -> Path:
    """A clean app folder for the bundle: pyproject.toml, the packages and the experiment configs
    (what pyproject's fab-include bundles)."""
    dest.mkdir()
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    (dest / "experiments").mkdir()
    for config in (REPO / "experiments").glob("*.toml"):
        shutil.copy2(config, dest / "experiments" / config.name)
    for package in APP_PACKAGES:
        shutil.copytree(REPO / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _run_status(flwr: str, run_id: str, env: dict[str, str], cwd: Path) -> dict:
    out = subprocess.run([flwr, "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
                         env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)["runs"][0]


def test_flwr_run_on_superlink_and_two_supernodes(tmp_path):
    flwr, superlink, supernode = (_cli(c) for c in ("flwr", "flower-superlink", "flower-supernode"))
    link_port, *node_ports = _free_ports(3)
    home, logs, out = tmp_path / "flwr-home", tmp_path / "logs", tmp_path / "out"
    home.mkdir()
    logs.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    experiment = tmp_path / "experiment.toml"
    experiment.write_text(EXPERIMENT)
    app = _make_app(tmp_path / "app")
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           # SuperExec asks for new ServerApp/ClientApp tasks every second by default
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}

    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str], **extra_env: str) -> subprocess.Popen:
        with (logs / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env={**env, **extra_env}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        procs.append(proc)
        return proc

    try:
        link = start("superlink", [
            superlink, "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
            "--database", str(tmp_path / "superlink.db"),
            "--disable-runtime-dependency-installation"])
        _wait_for_port(link_port, link, logs / "superlink.log")
        for pid, port in enumerate(node_ports):
            start(f"supernode-{pid}", [
                supernode, "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                "--host", "127.0.0.1", "--port", str(port),  # its own ClientAppIO (Runtime) API
                "--node-config", f"partition-id={pid} num-partitions={len(node_ports)}"],
                # one thread per client, as a Ray actor with simulation.num_cpus = 1 has
                OMP_NUM_THREADS="1")

        run_config = f'config="{experiment}" set="{OVERRIDES}" out="{out}"'
        try:
            run = subprocess.run([flwr, "run", str(app), CONNECTION, "--run-config", run_config,
                                  "--stream"], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as err:
            said = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout
            pytest.fail(f"flwr run did not finish in {RUN_TIMEOUT} s:\n{said}\n{_logs(logs)}")
        transcript = run.stdout + run.stderr
        assert run.returncode == 0, transcript[-4000:]
        started = re.search(r"Successfully started run (\d+)", transcript)
        assert started, transcript[-4000:]

        # The stream ends with the run; a failed ServerApp still exits 0, so ask the SuperLink.
        deadline = time.monotonic() + 30
        while not (status := _run_status(flwr, started.group(1), env, tmp_path))["status"] \
                .startswith("finished") and time.monotonic() < deadline:
            time.sleep(1)
        assert status["status"] == "finished:completed", \
            f"{status}\n{transcript[-4000:]}\n{_logs(logs)}"
    finally:
        left = _stop(procs)
    assert not left, f"processes left running: {sorted(left)}"

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [m["round"] for m in metrics] == [0, 1]
    assert all(0.0 <= m["global_test_accuracy"] <= 100.0 for m in metrics)
    assert (out / "config.toml").exists()
    resolved = (out / "config.toml").read_text()
    assert "curve_points = 5" in resolved and "\nbatch_size = 16" in resolved  # `set` arrived

    records = [json.loads(line) for line in (out / "barriers.jsonl").open()]
    assert [(r["round"], r["split"]) for r in records] == [
        (1, s) for s in ("local-train", "local-test")]
    for record in records:
        assert record["clients"] == [0, 1]  # both SuperNodes, by partition id
        for client in ("0", "1"):
            mine = record["by_client"][client]
            assert 2 <= mine["n"] <= 40 and set(mine["full_se"]) == {"loss", "error"}
            assert set(mine["per_layer"]["loss"]) == set(mine["layers"])
        assert set(record["full"]["error"]) == {"mean", "max", "q10", "q50", "q90"}
    assert all(isinstance(m.get("barrier_local_full_local-test_loss"), float) for m in metrics[1:])
