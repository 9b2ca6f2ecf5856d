"""A live progress display on a terminal (rich): the rounds of the run, and in a comparison the runs.

On a terminal ``fedbarrier run`` shows one bar, round n/N with elapsed time, ETA and the latest
accuracy and full barrier; ``fedbarrier compare`` adds a bar over its runs (run k/M with its own
ETA). When the stream is not a terminal (a log file, CI) nothing here is used and each round prints
one plain line, as before (:class:`fedbarrier.fl.recorders.ProgressPrinter`). ``--quiet`` shows
neither.

One display per process: :func:`live_display` opened inside an open one returns the open one, so
the runs of a comparison add their bar to the comparison's display.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

_active: Display | None = None


class Display:
    """The bars of one process: a rich ``Progress`` whose tasks are runs (and a comparison)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TextColumn("ETA"), TimeRemainingColumn(compact=True),
            TextColumn("{task.fields[latest]}"), console=console, refresh_per_second=4)

    def add(self, description: str, total: int, completed: int = 0) -> TaskID:
        return self.progress.add_task(description, total=total, completed=completed, latest="")

    def update(self, task: TaskID, *, completed: int | None = None, latest: str | None = None,
               description: str | None = None) -> None:
        fields = {"latest": latest} if latest is not None else {}
        self.progress.update(task, completed=completed, description=description, **fields)

    def finish(self, task: TaskID) -> None:
        """A run's bar stays as it ended, unless it ran inside a comparison (whose bar stays)."""
        if len(self.progress.tasks) > 1:
            self.progress.remove_task(task)


@contextmanager
def live_display(stream: TextIO | None = None, *, force_terminal: bool | None = None
                 ) -> Iterator[Display | None]:
    """The process's display while the block runs; None when ``stream`` (default stderr) is not
    a terminal: then callers print plain lines."""
    global _active
    if _active is not None:
        yield _active
        return
    console = Console(file=stream or sys.stderr, force_terminal=force_terminal)
    if not console.is_terminal:
        yield None
        return
    display = Display(console)
    display.progress.start()
    _active = display
    try:
        yield display
    finally:
        _active = None
        display.progress.stop()


def active_display() -> Display | None:
    """The open display, if a caller opened one on a terminal."""
    return _active


def latest_text(values: Mapping[str, Any]) -> str:
    """The latest numbers worth watching: accuracies and the full barriers (server, local)."""
    parts = []
    for key, fmt in (("global_test_accuracy", "acc {:.1f}%"), ("local_test_accuracy", "local {:.1f}%"),
                     ("barrier_full_test_error", "barrier {:+.1f}pp"),
                     ("barrier_local_full_local-test_error", "local {:+.1f}pp")):
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(fmt.format(value))
    return "  ".join(parts)
