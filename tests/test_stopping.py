"""A signal asks a run to stop: the wait for replies gives up, nothing partial is recorded."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import SimpleNamespace

import pytest

from fedbarrier.errors import RunInterrupted
from fedbarrier.fl.adapter import StoppableGrid
from fedbarrier.runtime import stopping
from fedbarrier.runtime.stopping import graceful_stop, raise_if_stop_requested, stop_requested


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_first_signal_only_asks_and_the_exit_status_is_the_shells(sig, code):
    before = signal.getsignal(sig)
    asked = []
    with graceful_stop(note=False, on_request=lambda: asked.append(True)):
        raise_if_stop_requested()  # nothing asked yet
        os.kill(os.getpid(), sig)  # the handler runs before kill returns (main thread)
        assert stop_requested() == sig and asked == [True]
        with pytest.raises(RunInterrupted) as stopped:
            raise_if_stop_requested()
    assert stopped.value.exit_code == code and signal.Signals(sig).name in str(stopped.value)
    assert signal.getsignal(sig) is before and stop_requested() is None


def test_a_second_ctrl_c_stops_at_once():
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        with graceful_stop(note=False), pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_second_signal_calls_the_handler_that_was_there_before():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with graceful_stop(note=False):
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_first_signal_says_what_happens_next(capsys):
    with graceful_stop():
        os.kill(os.getpid(), signal.SIGINT)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SIGINT: stopping" in err and "Ctrl-C again" in err


def test_off_the_main_thread_signals_keep_their_behaviour():
    result = {}

    def run():
        with graceful_stop(note=False):
            result["handler"] = signal.getsignal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert result["handler"] is before


def test_ray_keeps_our_sigterm_handler_while_active():
    """ray.init replaces SIGTERM's handler through this helper, and the driver's C++ handler
    aborts on SIGTERM unless the switch is on: both only while the context is active."""
    import ray._private.ray_constants as constants
    import ray._private.utils as utils

    original = utils.set_sigterm_handler
    with graceful_stop(note=False):
        ours = signal.getsignal(signal.SIGTERM)
        utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is ours
        assert constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER is True
    assert utils.set_sigterm_handler is original
    assert constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER is False


class SlowGrid:
    """Replies arrive one poll at a time; ``on_poll`` runs at each poll."""

    pull_interval = 0.0

    def __init__(self, on_poll=lambda n: None):
        self.polls = 0
        self.on_poll = on_poll
        self.pushed: list[int] = []

    def push_messages(self, messages):
        self.pushed = [m for m in messages]
        return list(self.pushed)

    def pull_messages(self, ids):
        self.polls += 1
        self.on_poll(self.polls)
        if self.polls <= 2:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids]

    def get_node_ids(self):
        return [1, 2]


def test_the_grid_waits_for_every_reply_and_forwards_the_rest():
    grid = SlowGrid()
    replies = StoppableGrid(grid).send_and_receive([7, 8], timeout=None)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == [7, 8] and grid.polls == 3
    assert StoppableGrid(grid).get_node_ids() == [1, 2]


def test_a_stop_asked_while_waiting_drops_the_round():
    grid = SlowGrid(on_poll=lambda n: n == 2 and stopping.request_stop(signal.SIGTERM))
    with graceful_stop(note=False), pytest.raises(RunInterrupted):
        StoppableGrid(grid).send_and_receive([7, 8], timeout=None)
    assert grid.polls == 2  # gave up before the replies came


def test_a_stop_asked_before_a_phase_sends_nothing():
    grid = SlowGrid()
    with graceful_stop(note=False), pytest.raises(RunInterrupted):
        stopping.request_stop(signal.SIGINT)
        StoppableGrid(grid).send_and_receive([7, 8], timeout=None)
    assert grid.pushed == []


def test_the_grid_gives_up_at_the_timeout():
    grid = SlowGrid()
    grid.pull_interval = 0.01
    assert StoppableGrid(grid).send_and_receive([7], timeout=0.0) == []


@pytest.mark.parametrize("fallout", [RuntimeError("An error was encountered. Ending simulation."),
                                     SystemExit(1)], ids=["engine-error", "sys-exit"])
def test_what_a_stop_sets_off_still_ends_as_an_interrupted_run(fallout):
    """After a SIGTERM to the whole job, Flower's engine may end with its own error (its clients
    died with the same signal) or a helper may call sys.exit: the run was still asked to stop
    and is whole, so it exits 143 with the resume hint, never 1 with a traceback."""
    with pytest.raises(RunInterrupted) as stopped, graceful_stop(note=False):
        os.kill(os.getpid(), signal.SIGTERM)
        raise fallout
    assert stopped.value.exit_code == 143 and stopped.value.__cause__ is fallout


def test_an_error_without_a_stop_request_passes_unchanged():
    with pytest.raises(RuntimeError, match="boom"), graceful_stop(note=False):
        raise RuntimeError("boom")


def test_the_note_goes_straight_to_the_stderr_file_descriptor(capfd, monkeypatch):
    """Written with os.write, not print: a handler that interrupts the main thread inside a
    write to sys.stderr must not raise (print would: 'reentrant call inside BufferedWriter')."""

    class MidWrite:  # sys.stderr as the handler finds it when it interrupted a write
        def fileno(self) -> int:
            return 2

        def write(self, text: str) -> int:
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

        def flush(self) -> None:
            pass

    with graceful_stop():
        monkeypatch.setattr(sys, "stderr", MidWrite())
        os.kill(os.getpid(), signal.SIGTERM)
        monkeypatch.undo()
    assert capfd.readouterr().err == ("SIGTERM: stopping; the round in progress is dropped "
                                      "(SIGTERM again to stop at once)\n")
