"""Latency and scale fixes for Flower's simulation engine (flwr 1.41-1.42), active during a run.

Measured on the round-overhead and scale benchmarks (2 cores):

- Flower's in-process engine hands the server's messages to the clients from a thread that
  polls the LinkState every 100 ms: the clients sat idle for 0-100 ms at the start of both
  phases of every round (~0.1 s a round, 2 s of the benchmark's 20 rounds). The dispatching
  thread is now woken when the server stores a message.
- Each of those polls asked the LinkState for every node's messages, and each ask scans every
  stored message: O(nodes x messages) per pass, whether a node was sampled or not. At 10,000
  nodes a round cost 2.7x the 10-node round, and the start-up's one query per node took minutes
  (quadratic). The dispatcher now asks only for the nodes that a message was stored for
  (:class:`Mailbox`, filled by the patched ``store_message_ins``): O(sampled) per round.
- The engine's node-to-partition mapping is published (:func:`simulated_partitions`) so that the
  ServerApp need not ask every node for its partition id, one message per node, at start-up.
- The engine's threads wait for work with 1 s timeouts and only then see that the run has
  ended: up to 1 s idle at the end. Their waits are capped at 50 ms (three threads waking 20
  times a second cost nothing measurable).
- ``ray.shutdown`` stops Ray's GCS before the autoscaler monitor, whose exit handler then tries
  to report to the dead GCS until Ray kills it after a 1 s grace period (a known Ray ordering
  problem). The monitor of a Ray instance this process started is killed first; a local
  simulation has nothing to autoscale.

All of them replace private names of Flower or Ray for the duration of the run and restore them
after, so they are written to be unable to hurt a run:

- they apply only to the releases they were written for (:data:`FLWR_VERSIONS`,
  :data:`RAY_VERSIONS`) and only where the functions they replace have the signatures the
  replacements expect (:data:`SIGNATURES`); anything else runs Flower's engine unchanged, at
  the old latency (:func:`unsupported_reason` says why; ``tests/test_engine_latency.py`` fails
  on the installed versions if it is not None);
- an exception inside a replacement falls back to Flower's own function (the dispatcher to
  Flower's loop, the wrappers to the functions they wrap; a mailbox that failed to note a node
  makes the dispatcher look at every node again, as Flower does), and
  :func:`stop_autoscaler_monitor` never raises: ``ray.shutdown`` stops the monitor anyway, a
  second later;
- a ServerApp that finds no published mapping, or one that does not name exactly the grid's
  nodes, asks the nodes as before.

Upstream changes that would make them unnecessary: a LinkState that indexes undelivered messages
by destination node and wakes the engine when one is stored (the first three), and a Grid that
tells the ServerApp each simulated node's ``node_config`` (the last).
"""

from __future__ import annotations

import inspect
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

#: The longest a thread of the engine waits before it checks whether the run has ended.
QUEUE_WAIT = 0.05
#: How often the dispatching thread looks for messages when nothing wakes it (Flower's value).
POLL_INTERVAL = 0.1
#: The longest :func:`stop_autoscaler_monitor` waits for a killed monitor to exit.
MONITOR_WAIT = 5.0

#: The releases the patches were written for, as [lowest, highest) (major, minor): the private
#: names they replace are those of flwr 1.41-1.42, which pin ray 2.55.
FLWR_VERSIONS = ((1, 41), (1, 43))
RAY_VERSIONS = ((2, 55), (2, 56))

_PLAIN = inspect.Parameter.POSITIONAL_OR_KEYWORD
#: Parameters (name, kind) of the functions the patches replace, as the replacements call and
#: accept them (Flower calls them positionally; a changed signature means changed semantics).
SIGNATURES: dict[str, tuple[tuple[str, Any], ...]] = {
    "add_messages_to_queue": (("state", _PLAIN), ("queue", _PLAIN), ("nodes_mapping", _PLAIN),
                              ("f_stop", _PLAIN)),
    "InMemoryLinkState.store_message_ins": (("self", _PLAIN), ("message", _PLAIN)),
    "RayBackend.terminate": (("self", _PLAIN),),
    "_register_node_info_stores": (("nodes_mapping", _PLAIN), ("run", _PLAIN),
                                   ("app_dir", _PLAIN)),
}


class Mailbox:
    """The nodes that messages were stored for since the dispatcher last looked, in that order;
    noting one wakes the dispatcher.

    ``lost`` is set when a node could not be noted: the dispatcher then looks at every node on
    every pass, as Flower's own loop does, for the rest of the run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[int, None] = {}  # an ordered set
        self.wake = threading.Event()
        self.lost = False

    def note(self, node_id: int) -> None:
        with self._lock:
            self._nodes[node_id] = None
        self.wake.set()

    def take(self) -> list[int]:
        """The noted nodes, forgotten here: a node whose messages are not all taken is noted
        again by the dispatcher."""
        with self._lock:
            nodes = list(self._nodes)
            self._nodes.clear()
        return nodes

    def reset(self) -> None:
        with self._lock:
            self._nodes.clear()
        self.wake.clear()
        self.lost = False


_mailbox = Mailbox()
_published: dict[int, int] | None = None  # the running engine's node id -> partition id
_published_now = threading.Event()  # set when it is, or when the patched run ends
_patched_run = False


class ShortWaitQueue(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` whose blocking ``get`` waits at most :data:`QUEUE_WAIT` seconds."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, QUEUE_WAIT)
        return super().get(block, timeout)


def dispatch_messages(state: Any, out: queue.Queue, nodes_mapping: dict[int, int],  # type: ignore[type-arg]
                      f_stop: threading.Event) -> None:
    """Flower's ``add_messages_to_queue``, woken by new messages instead of every 100 ms, and
    looking only at the nodes that messages were stored for.

    Each pass takes at most one undelivered message per node (as Flower does); a pass that found
    any looks again at once, and an empty one sleeps until a message is stored or the run ends.
    """
    while not f_stop.is_set():
        _mailbox.wake.clear()  # before looking: a message stored during the pass wakes the next
        nodes = nodes_mapping.keys() if _mailbox.lost else _mailbox.take()
        found = False
        for node_id in nodes:
            if node_id not in nodes_mapping:  # not a node of this engine: Flower skips it too
                continue
            for message in state.get_message_ins(node_id=node_id, limit=1):
                out.put(message)
                found = True
                _mailbox.note(node_id)  # it may hold more: look again on the next pass
        if not found:
            _sleep_until_message(f_stop)


def _sleep_until_message(f_stop: threading.Event) -> None:
    """Until a message is stored, the run ends (seen within :data:`QUEUE_WAIT`) or
    :data:`POLL_INTERVAL` has passed."""
    deadline = time.monotonic() + POLL_INTERVAL
    while not _mailbox.wake.wait(QUEUE_WAIT):
        if f_stop.is_set() or time.monotonic() > deadline:
            return


def simulated_partitions(wait: float = 0.0) -> dict[int, int] | None:
    """The running simulation engine's node id -> partition id; None outside a patched run, or
    if it is not published within ``wait`` seconds.

    The engine publishes it after registering every node, which the ServerApp may already see
    (100,000 nodes take seconds to register).
    """
    if _patched_run:
        _published_now.wait(wait)
    published = _published
    return None if published is None else dict(published)


def publishing_partitions() -> bool:
    """Whether a patched run is under way, whose engine publishes its node mapping."""
    return _patched_run


def _release(package: str) -> tuple[int, int] | None:
    """(major, minor) of an installed package, None if it is not installed or unreadable."""
    try:
        match = re.match(r"(\d+)\.(\d+)", metadata.version(package))
    except Exception:  # not installed, or broken metadata
        return None
    return (int(match.group(1)), int(match.group(2))) if match else None


def _version_reason(package: str, versions: tuple[tuple[int, int], tuple[int, int]]) -> str | None:
    release = _release(package)
    low, high = versions
    if release is None or not low <= release < high:
        shown = "not installed" if release is None else f"{release[0]}.{release[1]}"
        return (f"{package} {shown} is not one the patches were written for "
                f"(>={low[0]}.{low[1]}, <{high[0]}.{high[1]})")
    return None


def _signature_reason(name: str, fn: Any) -> str | None:
    try:
        found = tuple((p.name, p.kind) for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return f"the signature of {name} cannot be read"
    if found != SIGNATURES[name]:
        return f"{name} has parameters {[p for p, _ in found]}, the patches expect " \
               f"{[p for p, _ in SIGNATURES[name]]}"
    return None


def _engine() -> tuple[tuple[Any, Any, Any] | None, str | None]:
    """Flower's engine module, in-memory LinkState and Ray backend if the patches apply to
    them, else None and why not."""
    reason = _version_reason("flwr", FLWR_VERSIONS) or _version_reason("ray", RAY_VERSIONS)
    if reason:
        return None, reason
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

        if getattr(vce_api, "Queue", None) is not queue.Queue:
            return None, "Flower's engine no longer uses queue.Queue"
        for name, fn in (("add_messages_to_queue", vce_api.add_messages_to_queue),
                         ("InMemoryLinkState.store_message_ins",
                          InMemoryLinkState.store_message_ins),
                         ("RayBackend.terminate", RayBackend.terminate),
                         ("_register_node_info_stores", vce_api._register_node_info_stores)):
            reason = _signature_reason(name, fn)
            if reason:
                return None, reason
    except Exception as exc:  # a renamed module or attribute, or an import that fails
        return None, f"Flower's engine does not have the expected names ({exc!r})"
    return (vce_api, InMemoryLinkState, RayBackend), None


def unsupported_reason() -> str | None:
    """Why :func:`fast_dispatch` would leave Flower's engine unchanged; None if it applies."""
    return _engine()[1]


def supported() -> bool:
    """Whether :func:`fast_dispatch` applies to the installed Flower and Ray."""
    return unsupported_reason() is None


def stop_autoscaler_monitor() -> bool:
    """Kill the Ray autoscaler monitor if this process started Ray; whether one was killed.

    Never raises (an unknown Ray, changed process objects, a monitor that does not exit): the
    callers go on to ``ray.shutdown``, which stops the monitor itself.
    """
    if _version_reason("ray", RAY_VERSIONS):
        return False
    try:
        from ray._private import worker

        node = worker._global_node
        monitors: list[Any] = list(node.all_processes.get("monitor", [])) if node and node.head else []
        for info in monitors:
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=MONITOR_WAIT)
        return bool(monitors)
    except Exception:
        log.debug("could not stop Ray's autoscaler monitor; ray.shutdown will", exc_info=True)
        return False


def _falls_back(patch: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """``patch``, or ``original`` with the same arguments if ``patch`` raises."""

    def run(*args: Any) -> Any:
        try:
            return patch(*args)
        except Exception:
            log.warning("fedbarrier's %s failed; Flower's own takes over", original.__name__,
                        exc_info=True)
        return original(*args)

    run.__name__ = original.__name__
    return run


@contextmanager
def fast_dispatch() -> Iterator[None]:
    """Run Flower's simulation engine with the latency fixes of this module inside the block
    (unchanged if they do not apply to the installed Flower and Ray, see
    :func:`unsupported_reason`)."""
    engine, reason = _engine()
    if engine is None:
        log.debug("Flower's engine runs unpatched: %s", reason)
        yield
        return
    global _published, _patched_run
    vce_api, link_state, backend = engine
    saved = (vce_api.add_messages_to_queue, vce_api.Queue, link_state.store_message_ins,
             backend.terminate, vce_api._register_node_info_stores)
    add_messages, _, store, terminate, register_stores = saved
    _mailbox.reset()

    def store_message_ins(self: Any, message: Any) -> Any:
        stored = store(self, message)  # Flower's own; what it raises is Flower's behaviour
        try:
            if stored is not None:
                _mailbox.note(message.metadata.dst_node_id)
        except Exception:  # the dispatcher looks at every node from now on
            _mailbox.lost = True
            log.debug("could not note the message's node; the dispatcher scans all", exc_info=True)
        return stored

    def register_node_info_stores(nodes_mapping: Any, run: Any, app_dir: Any = None) -> Any:
        global _published
        stores = register_stores(nodes_mapping, run, app_dir)  # Flower's own
        _published = dict(nodes_mapping)
        _published_now.set()
        return stores

    def terminate_backend(self: Any) -> None:
        try:
            stop_autoscaler_monitor()
        except Exception:  # it does not raise; if it did, Flower's terminate stops the monitor
            log.debug("could not stop Ray's autoscaler monitor", exc_info=True)
        terminate(self)

    vce_api.add_messages_to_queue = _falls_back(
        lambda *args: dispatch_messages(*args), add_messages)  # looked up at call time
    vce_api.Queue = ShortWaitQueue
    link_state.store_message_ins = store_message_ins
    backend.terminate = terminate_backend
    vce_api._register_node_info_stores = register_node_info_stores
    _published, _patched_run = None, True
    _published_now.clear()
    try:
        yield
    finally:
        (vce_api.add_messages_to_queue, vce_api.Queue, link_state.store_message_ins,
         backend.terminate, vce_api._register_node_info_stores) = saved
        _published, _patched_run = None, False
        _published_now.set()  # nobody waits for a run that has ended
        _mailbox.reset()
