"""Shared test setup: no telemetry, tiny generated data, a fake grid and replies, one Ray cluster
for the simulation tests, and no Ray left behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# A federation small enough for CI: 3 clients on generated 1x8x8 images, 2 rounds, one worker.
TINY = [
    "seed=0",
    "data.dataset=synthetic",
    "data.synthetic_shape=[1, 8, 8]",
    "data.synthetic_classes=4",
    "data.synthetic_train_size=240",
    "data.synthetic_test_size=80",
    "data.synthetic_noise=3.0",
    "data.partition=dirichlet",
    "data.alpha=0.5",
    "data.num_clients=3",
    "data.min_partition_size=20",
    "train.rounds=2",
    "train.batch_size=16",
    "barriers.n=60",
    "barriers.curve_points=5",
    "output.plots=false",
    # Flower's engine with the clients in this process: no Ray to start (~4 s) and no worker to
    # import torch and Flower (~5 s), where the clients' work is milliseconds. The tests of Ray
    # itself (start-up, shutdown, signals, a joined cluster) and one run that must equal its
    # inline twin add ON_RAY.
    "simulation.backend=inline",
    # On 2 cores one Ray worker serves the 3 clients (with ON_RAY): starting a worker costs ~5 s
    # of CPU. tests/test_simulation.py runs two in parallel.
    f"simulation.num_cpus={min(2, os.cpu_count() or 1)}",
]
ON_RAY = ["simulation.backend=ray"]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


class FakeGrid:
    """A Flower Grid as strategies see it in configure_*: the connected node ids."""

    def __init__(self, ids):
        self.ids = list(ids)

    def get_node_ids(self):
        return list(self.ids)


def reply(node, pid, state, metrics):
    """A client's train reply from node ``node`` as fedbarrier's ClientApp builds it."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    request = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics),
                               "client": ConfigRecord({"partition-id": pid})}), reply_to=request)


@pytest.fixture
def task_identity(monkeypatch):
    """Messages need a run identity, as inside a Flower run."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_task_id", "_node_id"):  # the metaclass stores them privately
        monkeypatch.setattr(TaskIdentity, attr, 1, raising=False)


def kill_processes_matching(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (e.g. a Ray temp folder)."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    for pid in found.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray cluster of the test process's own, joined through ``RAY_ADDRESS`` (runs and their
    subprocesses read it): for the test of joining a cluster. Started when first asked for (most
    runs here use the inline backend, the Ray ones a private instance, as `fedbarrier run` does);
    the value is its address, or None where ``ray`` is missing or ``RAY_ADDRESS`` is already set.
    """
    ray_bin = shutil.which("ray")
    if ray_bin is None or os.environ.get("RAY_ADDRESS"):
        yield None
        return
    temp = tempfile.mkdtemp(prefix="fbr-", dir="/tmp" if os.path.isdir("/tmp") else None)
    address = f"127.0.0.1:{_free_port()}"
    # In a process group of its own, which every process of the cluster inherits (some, such as
    # the dashboard agent, do not name the temp folder on their command line).
    start = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={address.split(':')[1]}", "--node-ip-address=127.0.0.1",
         f"--num-cpus={os.cpu_count() or 1}", f"--temp-dir={temp}", "--include-dashboard=false",
         "--disable-usage-stats",
         # `ray start` hands workers ports from 10002-19999 without asking the system, so two
         # clusters on one machine (one per pytest-xdist process) gave one port to two processes
         # and Ray aborted the driver that bound second ("Failed to start the grpc server. The
         # specified port is 10002"). Port 0 lets the system choose, as `ray.init()` does.
         "--min-worker-port=0", "--max-worker-port=0", "--dashboard-agent-listen-port=0",
         f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    said, _ = start.communicate(timeout=120)
    try:
        if start.returncode != 0:
            pytest.fail(f"could not start the tests' Ray cluster:\n{said[-2000:]}")
        os.environ["RAY_ADDRESS"] = address
        yield address
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        # `ray stop` would stop every Ray on the machine; end only this cluster's processes.
        try:
            os.killpg(start.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_processes_matching(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def private_ray(monkeypatch):
    """This test's runs start their own Ray instance, as `fedbarrier run` does by default."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _no_ray_left_behind():
    yield
    try:
        import ray
    except ImportError:  # pragma: no cover
        return
    if ray.is_initialized():
        ray.shutdown()


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of a run's TensorBoard events, read by TensorBoard's own
    EventAccumulator (which drops what a later ``purge_step`` supersedes, as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(autouse=True)
def torch_threads_stay_as_they_were():
    """A test that leaves torch's thread count changed changes every later run in its process:
    ``torch.set_num_threads`` in any thread sets the count of the threads started after it (the
    server's, the clients'), and the count moves float results in the last bits (a resumed run
    then differed from its reference by one ulp). Restore it, and fail that test."""
    import torch

    from fedbarrier.runtime.process_tuning import default_torch_threads

    before = (torch.get_num_threads(), default_torch_threads())
    yield
    after = (torch.get_num_threads(), default_torch_threads())
    if after != before:
        torch.set_num_threads(before[0])
        if default_torch_threads() != before[1]:
            torch.set_num_threads(before[1])
        pytest.fail(f"the test changed torch's thread count (this thread, new threads) from "
                    f"{before} to {after}")

