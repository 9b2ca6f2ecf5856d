"""Stopping a run when asked (Ctrl-C, SIGTERM) at a point where its records stay whole.

Inside :func:`graceful_stop`, the first SIGINT or SIGTERM only *asks* the run to stop. The
server stops at its next wait for client replies (:func:`raise_if_stop_requested`, which the
round pipeline's grid calls while it polls) and raises :class:`RunInterrupted`: the round in
progress is dropped, nothing of it is recorded, and Flower and Ray then shut down in their own
order, as after any error of the server. A second signal stops at once, as before.

Why not let SIGINT raise KeyboardInterrupt, as Python does: it surfaces in whatever Flower's
engine is doing on the main thread; the engine then stops Ray while its worker threads still
wait on Ray, and Ray ends the whole process with status 1 ("The core worker has already been
shutdown"), before fedbarrier can say it was interrupted. SIGTERM (what SLURM, Kubernetes,
``timeout`` and systemd send) went through Ray's own handler, ``sys.exit(15)`` in the same place.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fedbarrier.errors import RunInterrupted

#: The signals that ask a run to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: list[int] = []  # the signal that asked, while a graceful_stop is active


def stop_requested() -> int | None:
    """The signal number that asked the current run to stop, or None."""
    return _requested[0] if _requested else None


def request_stop(signum: int) -> None:
    """Ask the current run to stop (what the signal handler does; tests call it directly)."""
    if not _requested:
        _requested.append(signum)


def raise_if_stop_requested() -> None:
    """Raise :class:`RunInterrupted` if a stop was asked for."""
    if (signum := stop_requested()) is not None:
        raise RunInterrupted(signum)


def _say(line: str) -> None:
    """Write one line to stderr from a signal handler: straight to the file descriptor, since
    ``print`` raises if the handler interrupted the main thread while it was writing there."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without one (tests)
        print(line, file=sys.stderr, flush=True)
        return
    os.write(fd, (line + "\n").encode())


def _act_as_before(signum: int, previous: Any, frame: Any) -> None:
    """A second signal: what the process did before :func:`graceful_stop`, at once."""
    signal.signal(signum, previous)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)  # the default action: the process ends by the signal


@contextmanager
def graceful_stop(note: bool = True, on_request: Callable[[], None] | None = None
                  ) -> Iterator[None]:
    """While active (on the main thread), SIGINT and SIGTERM ask the run to stop (see above).

    With ``note``, the first signal prints one line saying what happens next; ``on_request``
    runs then too (e.g. to silence the engine's reports of clients it loses while stopping, as
    when SIGTERM reaches every process of the job). Elsewhere than on the main thread (where
    Python cannot install handlers), signals keep their behaviour.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        if stop_requested() is not None:
            _act_as_before(signum, previous[signum], frame)
            return
        request_stop(signum)
        if note:
            again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            _say(f"{signal.Signals(signum).name}: stopping; the round in progress is dropped "
                 f"({again} again to stop at once)")
        if on_request is not None:
            on_request()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        with _ray_keeps_our_sigterm_handler():
            yield
    except (Exception, SystemExit) as exc:
        # Asked to stop, the run may end through the fallout instead (Flower's engine losing
        # clients that the same signal ended, a helper's exit): it is still an interrupted run,
        # whole and resumable, not a crash. (KeyboardInterrupt, a second Ctrl-C, passes as is.)
        if (signum := stop_requested()) is not None and not isinstance(exc, RunInterrupted):
            raise RunInterrupted(signum) from exc
        raise
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
        _requested.clear()


@contextmanager
def _ray_keeps_our_sigterm_handler() -> Iterator[None]:
    """Keep SIGTERM ours in a driver that starts Ray meanwhile (Flower's engine calls
    ``ray.init``), in this process only (Ray's own processes keep their handlers):

    - ``ray.init`` installs a Python handler, ``sys.exit(15)``, over ours: its helper
      ``set_sigterm_handler`` does nothing meanwhile;
    - the driver's core worker installs a C++ failure-signal handler that, on SIGTERM, prints
      a stack dump and aborts the process (status 134) after our handler has run: Ray's switch
      ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` is on meanwhile (crashes of the driver still get
      Python's traceback).

    Both are Ray internals, so each is patched only where it exists with the expected form;
    without them (another Ray), SIGTERM ends the run as it did before.
    """
    try:
        import ray._private.ray_constants as constants
        import ray._private.utils as utils
    except ImportError:
        yield
        return
    patches: list[tuple[Any, str, Any]] = []
    if callable(getattr(utils, "set_sigterm_handler", None)):
        patches.append((utils, "set_sigterm_handler", lambda handler: None))
    if isinstance(getattr(constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None), bool):
        patches.append((constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", True))
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in originals:
            setattr(module, name, value)
