"""The simulation engine's latency fixes: wiring, restoring, that they really take effect, and
that they cannot hurt a run (other releases, changed signatures, patches that raise).

No assertion here is a speed target: each bound is 100x or more away from the behaviour it
checks (a dispatcher that is woken vs. one that sleeps a minute).
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedbarrier.config import load_config
from fedbarrier.fl import simulation
from fedbarrier.fl.simulation import run_experiment, scratch_root
from fedbarrier.runtime import engine_patches as engine_latency
from fedbarrier.runtime.engine_patches import (
    ShortWaitQueue,
    dispatch_messages,
    fast_dispatch,
    stop_autoscaler_monitor,
    supported,
    unsupported_reason,
)
from tests.conftest import ON_RAY, TINY


class FakeState:
    """Undelivered messages per node, handed out like Flower's LinkState.get_message_ins."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, list[str]] = {}
        self.asked: list[int] = []

    def add(self, node_id: int, message: str) -> None:
        with self.lock:
            self.pending.setdefault(node_id, []).append(message)
        engine_latency._mailbox.note(node_id)  # what the patched store_message_ins does

    def get_message_ins(self, node_id: int, limit: int | None) -> list[str]:
        with self.lock:
            self.asked.append(node_id)
            messages = self.pending.get(node_id, [])
            taken, self.pending[node_id] = messages[:limit], messages[limit:]
        return taken


def engine_names() -> tuple:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    return (vce_api.add_messages_to_queue, vce_api.Queue, InMemoryLinkState.store_message_ins,
            RayBackend.terminate, vce_api._register_node_info_stores)


def test_installed_flower_and_ray_are_those_the_fixes_were_written_for() -> None:
    """Fails when Flower or Ray is upgraded past the tested releases or changes the replaced
    functions: the fixes would silently stop applying (runs still work, at the old latency)."""
    assert unsupported_reason() is None
    assert supported()


@pytest.mark.parametrize("package, version", [("flwr", "1.43.0"), ("flwr", "1.40.2"),
                                              ("flwr", "1.43.0.dev20261026"), ("ray", "2.56.0"),
                                              ("ray", "2.54.1"), ("ray", "3.0.0")])
def test_another_release_leaves_the_engine_unpatched(monkeypatch, package, version) -> None:
    installed = engine_latency.metadata.version
    monkeypatch.setattr(engine_latency.metadata, "version",
                        lambda name: version if name == package else installed(name))
    assert not supported()
    assert f"{package} {'.'.join(version.split('.')[:2])} is not one" in unsupported_reason()
    before = engine_names()
    with fast_dispatch():
        assert engine_names() == before
    if package == "ray":  # Ray's process objects may have changed: leave them to ray.shutdown
        assert not stop_autoscaler_monitor()


def test_a_missing_package_leaves_the_engine_unpatched(monkeypatch) -> None:
    def version(name: str) -> str:
        raise engine_latency.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(engine_latency.metadata, "version", version)
    assert "not installed" in unsupported_reason()


def _flower_functions_with_other_signatures():
    def add_messages_to_queue(state, queue, nodes_mapping, f_stop, poll=0.1): ...
    def store_message_ins(self, message, *, validate=True): ...
    def terminate(self, timeout): ...
    def _register_node_info_stores(nodes_mapping, run): ...

    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    return [(vce_api, "add_messages_to_queue", add_messages_to_queue),
            (InMemoryLinkState, "store_message_ins", store_message_ins),
            (RayBackend, "terminate", terminate),
            (vce_api, "_register_node_info_stores", _register_node_info_stores)]


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["add_messages_to_queue", "store_message_ins",
                                                     "terminate", "_register_node_info_stores"])
def test_a_changed_signature_leaves_the_engine_unpatched(monkeypatch, index) -> None:
    owner, name, changed = _flower_functions_with_other_signatures()[index]
    monkeypatch.setattr(owner, name, changed)
    assert not supported()
    assert name in unsupported_reason()
    before = engine_names()
    with fast_dispatch():
        assert engine_names() == before


def test_an_engine_without_queue_queue_is_left_unpatched(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.setattr(vce_api, "Queue", type("OtherQueue", (queue.Queue,), {}))
    assert not supported()


def test_fast_dispatch_replaces_the_engine_names_and_restores_them() -> None:
    before = engine_names()
    with fast_dispatch():
        during = engine_names()
        assert during[1] is ShortWaitQueue
        assert all(now is not then for now, then in zip(during, before))
    assert engine_names() == before


def test_the_engines_node_mapping_is_published_during_the_run_only(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.setattr(vce_api, "_register_node_info_stores",
                        lambda nodes_mapping, run, app_dir=None: {n: "store" for n in nodes_mapping})
    assert engine_latency.simulated_partitions() is None
    with fast_dispatch():
        stores = vce_api._register_node_info_stores(nodes_mapping={7: 0, 3: 1}, run=None,
                                                    app_dir=None)
        assert stores == {7: "store", 3: "store"}  # Flower's own result, unchanged
        assert engine_latency.simulated_partitions() == {7: 0, 3: 1}
    assert engine_latency.simulated_partitions() is None


def test_a_failing_dispatcher_falls_back_to_flowers_own(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    def broken(*args):
        raise AttributeError("a LinkState without get_message_ins(limit=)")

    monkeypatch.setattr(engine_latency, "dispatch_messages", broken)
    state, out, stop = FakeState(), queue.Queue(), threading.Event()
    with fast_dispatch():
        thread = threading.Thread(target=vce_api.add_messages_to_queue,
                                  args=(state, out, {1: 0}, stop))
        thread.start()
        try:
            state.add(1, "a")
            assert out.get(timeout=30) == "a"  # delivered by Flower's loop: ours raised at once
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_failing_wake_up_still_stores_the_message_and_the_dispatcher_scans_all(
        monkeypatch) -> None:
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    stored = []

    def store_message_ins(self, message):
        stored.append(message)
        return "message-id"

    def broken(node_id: int) -> None:
        raise RuntimeError("cannot note the node")

    monkeypatch.setattr(InMemoryLinkState, "store_message_ins", store_message_ins)
    message = SimpleNamespace(metadata=SimpleNamespace(dst_node_id=5))
    with fast_dispatch():
        monkeypatch.setattr(engine_latency._mailbox, "note", broken)
        assert InMemoryLinkState.store_message_ins is not store_message_ins
        assert InMemoryLinkState.store_message_ins(object(), message) == "message-id"
        assert engine_latency._mailbox.lost  # from now on the dispatcher looks at every node
    assert stored == [message]


def test_the_dispatcher_asks_only_for_nodes_with_stored_messages_unless_one_was_lost() -> None:
    state, out, stop = FakeState(), queue.Queue(), threading.Event()
    nodes = {n: n for n in range(1000)}
    engine_latency._mailbox.reset()
    state.add(17, "a")
    state.add(17, "b")
    state.add(4242, "not this engine's node")
    state.pending[3] = ["stored, but its node was never noted"]

    def dispatch_until(done) -> list[str]:
        """Run the dispatcher until ``done()`` (waiting up to 60 s), then what it delivered."""
        stop.clear()
        thread = threading.Thread(target=dispatch_messages, args=(state, out, nodes, stop))
        thread.start()
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a few more passes: nothing else may be asked for or delivered
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        return [out.get_nowait() for _ in range(out.qsize())]

    try:
        assert dispatch_until(lambda: out.qsize() == 2) == ["a", "b"]
        assert set(state.asked) == {17}  # not 1,000 nodes a pass, nor the unknown node
        engine_latency._mailbox.lost = True
        state.asked.clear()
        assert dispatch_until(lambda: set(state.asked) == set(nodes)) == [
            "stored, but its node was never noted"]
    finally:
        engine_latency._mailbox.reset()


def test_a_failing_monitor_stop_still_terminates_the_backend(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    terminated = []

    def terminate(self):
        terminated.append(self)

    def broken() -> bool:
        raise RuntimeError("Ray's process objects changed")

    monkeypatch.setattr(RayBackend, "terminate", terminate)
    monkeypatch.setattr(engine_latency, "stop_autoscaler_monitor", broken)
    backend = object()
    with fast_dispatch():
        assert RayBackend.terminate is not terminate
        RayBackend.terminate(backend)
    assert terminated == [backend]


@pytest.mark.parametrize("process", [object(), SimpleNamespace(poll=lambda: None, kill=None)],
                         ids=["no poll", "kill not callable"])
def test_stop_autoscaler_monitor_never_raises(monkeypatch, process) -> None:
    from ray._private import worker

    node = SimpleNamespace(head=True, all_processes={"monitor": [SimpleNamespace(process=process)]})
    monkeypatch.setattr(worker, "_global_node", node)
    assert stop_autoscaler_monitor() is False


def ray_left_up(monkeypatch, tmp_path, *, run_simulation, shutdown, stop_monitor):
    """A tiny config whose run leaves Ray up for _simulate's clean-up: Flower's run_simulation,
    ray.shutdown and the monitor stop replaced. Returns it with the list of scratch folders the
    run is given (kept alive there: a collected TemporaryDirectory removes itself)."""
    import flwr.simulation
    import ray

    scratches: list[tempfile.TemporaryDirectory] = []

    def make_scratch(root: str):
        scratch = tempfile.TemporaryDirectory(prefix="fedbarrier-", dir=tmp_path)
        scratches.append(scratch)
        return scratch

    monkeypatch.setattr(flwr.simulation, "run_simulation", run_simulation)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(simulation, "stop_autoscaler_monitor", stop_monitor)
    monkeypatch.setattr(simulation, "make_scratch", make_scratch)
    return load_config(None, [*TINY, *ON_RAY, "barriers.enabled=false", "train.rounds=1"]), scratches


@pytest.mark.parametrize("failing", ["monitor", "shutdown", "both"])
def test_ray_is_shut_down_and_scratch_removed_whatever_raises_on_the_way(monkeypatch, tmp_path,
                                                                         failing) -> None:
    """A run that failed early leaves Ray up: _simulate's clean-up stops it and removes the
    scratch folder even when a step before raises (a KeyboardInterrupt included)."""

    def run_simulation(**kwargs):
        raise RuntimeError("the run failed early")

    def stop_monitor() -> bool:
        if failing in ("monitor", "both"):
            raise KeyboardInterrupt
        return True

    shutdowns = []

    def shutdown() -> None:
        shutdowns.append(True)
        if failing in ("shutdown", "both"):
            raise OSError("ray.shutdown failed")

    cfg, scratches = ray_left_up(monkeypatch, tmp_path, run_simulation=run_simulation,
                                 shutdown=shutdown, stop_monitor=stop_monitor)
    expected = KeyboardInterrupt if failing in ("monitor", "both") else OSError
    with pytest.raises(expected):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert shutdowns == [True]
    [scratch] = scratches
    assert not Path(scratch.name).exists()



def test_dispatcher_is_woken_by_a_new_message_not_by_its_poll(monkeypatch) -> None:
    monkeypatch.setattr(engine_latency, "POLL_INTERVAL", 600.0)
    monkeypatch.setattr(engine_latency, "QUEUE_WAIT", 600.0)  # only a new message wakes it
    state, out, stop = FakeState(), queue.Queue(), threading.Event()
    engine_latency._mailbox.reset()
    state.add(1, "a")
    state.add(1, "b")  # one per node per pass, as Flower's dispatcher: "b" needs a second pass
    state.add(2, "c")
    thread = threading.Thread(target=dispatch_messages, args=(state, out, {1: 0, 2: 1}, stop))
    thread.start()
    try:
        assert sorted(out.get(timeout=30) for _ in range(3)) == ["a", "b", "c"]
        time.sleep(0.2)  # the dispatcher has found nothing more and sleeps (600 s poll)
        state.add(2, "d")
        assert out.get(timeout=30) == "d"
    finally:
        stop.set()
        engine_latency._mailbox.wake.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_short_wait_queue_caps_blocking_waits() -> None:
    q: ShortWaitQueue = ShortWaitQueue()
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=600)
    assert time.monotonic() - start < 60
    q.put(1)
    assert q.get(timeout=600) == 1


@pytest.mark.slow
def test_a_run_is_dispatched_without_waiting_for_the_poll(monkeypatch, tmp_path) -> None:
    """With the fallback poll at 5 minutes, the run (seconds) ends in time only if every
    dispatch (the partition query, both phases of the round) and the end of the run wake the
    dispatcher."""
    monkeypatch.setattr(engine_latency, "POLL_INTERVAL", 300.0)
    # The dispatcher is the engine's, whichever backend runs the clients: inline, no Ray start-up.
    cfg = load_config(None, [*TINY, "barriers.enabled=false", "train.rounds=1"])
    start = time.monotonic()
    run_experiment(cfg, tmp_path / "run", progress=False)
    assert time.monotonic() - start < 150
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["round"] for r in rounds] == [0, 1]


def test_autoscaler_monitor_of_a_local_ray_is_stopped(private_ray) -> None:
    import ray

    assert not stop_autoscaler_monitor()  # no Ray started by this process
    # Its own session folder (a short path: Ray's sockets live inside), removed afterwards: a
    # stale one in /tmp/ray can hang a later Ray start.
    temp = tempfile.mkdtemp(prefix="fbt-", dir=scratch_root())
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        from ray._private import worker

        monitor = worker._global_node.all_processes["monitor"][0].process
        assert stop_autoscaler_monitor()
        assert monitor.poll() is not None
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("fallout", [SystemExit(1), OSError("the GCS is gone")],
                         ids=["sys-exit", "error"])
def test_a_stopped_run_stays_interrupted_when_its_clean_up_fails(monkeypatch, tmp_path,
                                                                 fallout) -> None:
    """SIGTERM to the whole job stops Ray's processes too: stopping Ray afterwards may fail (CI
    saw a SIGTERM'd run exit 1 after its stop note). The run is still an interrupted one, its
    scratch folder is still removed."""
    from fedbarrier.errors import RunInterrupted

    def run_simulation(**kwargs):
        raise RunInterrupted(signal.SIGTERM)

    def shutdown() -> None:
        raise fallout

    cfg, scratches = ray_left_up(monkeypatch, tmp_path, run_simulation=run_simulation,
                                 shutdown=shutdown, stop_monitor=lambda: True)
    with pytest.raises(RunInterrupted) as stopped:
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert stopped.value.exit_code == 143
    [scratch] = scratches
    assert not Path(scratch.name).exists()
