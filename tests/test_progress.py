"""The live progress display: a bar on a terminal, plain lines elsewhere, one display per process."""

from __future__ import annotations

import io

from fedbarrier.fl.recorders import LiveRounds, ProgressPrinter, progress_hook
from fedbarrier.fl.round import RoundRecord
from fedbarrier.outputs.progress import active_display, latest_text, live_display


def record(r: int, acc: float, barrier: float) -> RoundRecord:
    return RoundRecord(round=r, global_={"global_test_accuracy": acc},
                       measured={"barrier_full_test_error": barrier})


def test_a_terminal_gets_a_bar_with_round_eta_and_the_latest_numbers():
    screen = io.StringIO()
    with live_display(screen, force_terminal=True) as display:
        assert display is not None and active_display() is display
        hook = progress_hook(3, first_round=1, label="quickstart")
        assert isinstance(hook, LiveRounds)
        for r, acc in ((0, 10.0), (1, 40.0), (2, 65.5)):
            hook.on_round_end(record(r, acc, 3.25))
        display.progress.refresh()
        shown = screen.getvalue()
        hook.close()
    assert "quickstart" in shown and "2/3" in shown and "ETA" in shown
    assert "acc 65.5%" in shown and "barrier +3.2pp" in shown
    assert active_display() is None


def test_a_stream_that_is_no_terminal_gets_plain_lines():
    log = io.StringIO()
    with live_display(log) as display:
        assert display is None
        hook = progress_hook(3, first_round=1)
    assert isinstance(hook, ProgressPrinter)
    assert log.getvalue() == ""


def test_a_resumed_run_starts_its_bar_where_it_resumed_and_runs_share_one_display():
    screen = io.StringIO()
    with live_display(screen, force_terminal=True) as outer:
        alone = progress_hook(10, first_round=5)
        [task] = outer.progress.tasks
        assert (task.completed, task.total) == (4, 10)
        alone.close()
        assert len(outer.progress.tasks) == 1  # a single run's bar stays where it ended
    with live_display(screen, force_terminal=True) as outer:
        runs = outer.add("runs", total=4)
        with live_display(io.StringIO()) as inner:  # a run inside a comparison
            assert inner is outer
            hook = progress_hook(10, first_round=1)
            assert len(outer.progress.tasks) == 2
            hook.close()
        assert [t.id for t in outer.progress.tasks] == [runs]  # the comparison's bar stays


def test_latest_text_shows_what_the_record_holds():
    assert latest_text({"global_test_accuracy": 50.0, "local_test_accuracy": 61.25,
                        "barrier_local_full_local-test_error": -1.0}) == \
        "acc 50.0%  local 61.2%  local -1.0pp"
    assert latest_text({"round": 0}) == ""
