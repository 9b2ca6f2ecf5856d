"""Latency fixes for Flower's simulation engine (flwr 1.41-1.42 on Ray), active during a run.

Measured on the round-overhead benchmark (2 cores):

- Flower's in-process engine hands the server's messages to the clients from a thread that
  polls the LinkState every 100 ms: the clients sat idle for 0-100 ms at the start of both
  phases of every round (~0.1 s a round, 2 s of the benchmark's 20 rounds). The dispatching
  thread is now woken when the server stores a message (the 100 ms poll stays as a fallback).
- The engine's threads wait for work with 1 s timeouts and only then see that the run has
  ended: up to 1 s idle at the end. Their waits are capped at 50 ms (three threads waking 20
  times a second cost nothing measurable).
- ``ray.shutdown`` stops Ray's GCS before the autoscaler monitor, whose exit handler then tries
  to report to the dead GCS until Ray kills it after a 1 s grace period (a known Ray ordering
  problem). The monitor of a Ray instance this process started is killed first; a local
  simulation has nothing to autoscale.

All three replace private names of Flower or Ray for the duration of the run and restore them
after. If a release renames them, runs work as before at the old latency, and
``tests/test_engine_latency.py`` says so.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The longest a thread of the engine waits before it checks whether the run has ended.
QUEUE_WAIT = 0.05
#: How often the dispatching thread looks for messages when nothing wakes it (Flower's value).
POLL_INTERVAL = 0.1

_new_message = threading.Event()


class ShortWaitQueue(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` whose blocking ``get`` waits at most :data:`QUEUE_WAIT` seconds."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, QUEUE_WAIT)
        return super().get(block, timeout)


def dispatch_messages(state: Any, out: queue.Queue, nodes_mapping: dict[int, int],  # type: ignore[type-arg]
                      f_stop: threading.Event) -> None:
    """Flower's ``add_messages_to_queue``, woken by new messages instead of every 100 ms.

    Each pass takes at most one undelivered message per node (as Flower does); a pass that found
    any looks again at once, and an empty one sleeps until a message is stored or the run ends.
    """
    while not f_stop.is_set():
        _new_message.clear()  # before looking: a message stored during the pass wakes the next
        found = False
        for node_id in nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                out.put(message)
                found = True
        if not found:
            _sleep_until_message(f_stop)


def _sleep_until_message(f_stop: threading.Event) -> None:
    """Until a message is stored, the run ends (seen within :data:`QUEUE_WAIT`) or
    :data:`POLL_INTERVAL` has passed."""
    deadline = time.monotonic() + POLL_INTERVAL
    while not _new_message.wait(QUEUE_WAIT):
        if f_stop.is_set() or time.monotonic() > deadline:
            return


def stop_autoscaler_monitor() -> bool:
    """Kill the Ray autoscaler monitor if this process started Ray; whether one was killed."""
    try:
        from ray._private import worker
        node = worker._global_node
        monitors = node.all_processes.get("monitor", []) if node and node.head else []
    except (ImportError, AttributeError):
        return False
    for info in monitors:
        if info.process.poll() is None:
            info.process.kill()
            info.process.wait()
    return bool(monitors)


def _engine() -> tuple[Any, Any, Any] | None:
    """Flower's engine module, in-memory LinkState and Ray backend, if they have the expected
    names."""
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    except ImportError:
        return None
    if not all(hasattr(vce_api, name) for name in ("add_messages_to_queue", "Queue")) \
            or not hasattr(InMemoryLinkState, "store_message_ins") \
            or not hasattr(RayBackend, "terminate"):
        return None
    return vce_api, InMemoryLinkState, RayBackend


def supported() -> bool:
    """Whether the installed Flower has the names :func:`fast_dispatch` replaces."""
    return _engine() is not None


@contextmanager
def fast_dispatch() -> Iterator[None]:
    """Run Flower's simulation engine with the latency fixes of this module inside the block."""
    engine = _engine()
    if engine is None:
        yield
        return
    vce_api, link_state, backend = engine
    saved = (vce_api.add_messages_to_queue, vce_api.Queue, link_state.store_message_ins,
             backend.terminate)
    store, terminate = saved[2], saved[3]

    def store_message_ins(self: Any, message: Any) -> Any:
        try:
            return store(self, message)
        finally:
            _new_message.set()

    def terminate_backend(self: Any) -> None:
        stop_autoscaler_monitor()
        terminate(self)

    vce_api.add_messages_to_queue = dispatch_messages
    vce_api.Queue = ShortWaitQueue
    link_state.store_message_ins = store_message_ins
    backend.terminate = terminate_backend
    try:
        yield
    finally:
        (vce_api.add_messages_to_queue, vce_api.Queue, link_state.store_message_ins,
         backend.terminate) = saved
