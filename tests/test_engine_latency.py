"""The simulation engine's latency fixes: wiring, restoring, and that they really take effect.

No assertion here is a speed target: each bound is 100x or more away from the behaviour it
checks (a dispatcher that is woken vs. one that sleeps a minute).
"""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
import threading
import time

import pytest

from fedbarrier.runtime import engine_patches as engine_latency
from fedbarrier.config import load_config
from fedbarrier.fl.simulation import run_experiment, scratch_root
from fedbarrier.runtime.engine_patches import (
    ShortWaitQueue,
    dispatch_messages,
    fast_dispatch,
    stop_autoscaler_monitor,
    supported,
)
from tests.conftest import TINY


class FakeState:
    """Undelivered messages per node, handed out like Flower's LinkState.get_message_ins."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, list[str]] = {}

    def add(self, node_id: int, message: str) -> None:
        with self.lock:
            self.pending.setdefault(node_id, []).append(message)
        engine_latency._new_message.set()  # what the patched store_message_ins does

    def get_message_ins(self, node_id: int, limit: int | None) -> list[str]:
        with self.lock:
            messages = self.pending.get(node_id, [])
            taken, self.pending[node_id] = messages[:limit], messages[limit:]
        return taken


def test_installed_flower_and_ray_have_the_names_the_fixes_replace() -> None:
    """Fails when a Flower release renames them: the fixes would silently stop applying."""
    assert supported()


def test_fast_dispatch_replaces_the_engine_names_and_restores_them() -> None:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    before = (vce_api.add_messages_to_queue, vce_api.Queue, InMemoryLinkState.store_message_ins,
              RayBackend.terminate)
    with fast_dispatch():
        assert vce_api.add_messages_to_queue is dispatch_messages
        assert vce_api.Queue is ShortWaitQueue
        assert InMemoryLinkState.store_message_ins is not before[2]
        assert RayBackend.terminate is not before[3]
    assert (vce_api.add_messages_to_queue, vce_api.Queue, InMemoryLinkState.store_message_ins,
            RayBackend.terminate) == before


def test_dispatcher_is_woken_by_a_new_message_not_by_its_poll(monkeypatch) -> None:
    monkeypatch.setattr(engine_latency, "POLL_INTERVAL", 600.0)
    monkeypatch.setattr(engine_latency, "QUEUE_WAIT", 600.0)  # only a new message wakes it
    state, out, stop = FakeState(), queue.Queue(), threading.Event()
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
        engine_latency._new_message.set()
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


def test_a_run_is_dispatched_without_waiting_for_the_poll(monkeypatch, tmp_path) -> None:
    """With the fallback poll at 5 minutes, the run (seconds) ends in time only if every
    dispatch (the partition query, both phases of the round) and the end of the run wake the
    dispatcher."""
    monkeypatch.setattr(engine_latency, "POLL_INTERVAL", 300.0)
    cfg = load_config(None, [*TINY, "barriers.enabled=false", "train.rounds=1"])
    start = time.monotonic()
    run_experiment(cfg, tmp_path / "run", progress=False)
    assert time.monotonic() - start < 150
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["round"] for r in rounds] == [0, 1]


def test_autoscaler_monitor_of_a_local_ray_is_stopped() -> None:
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
