"""The one exception type that reaches users as a clean one-line message.

Anything a user typed (config files, ``--set`` values, paths, checkpoints) that turns out to be
wrong raises :class:`UserError`. The CLI prints ``error: <message>`` and exits with status 2, with
no traceback. Everything else is a bug and keeps its traceback.
"""

import signal


class UserError(Exception):
    """Bad input from the user; the message names the bad value and what is allowed."""

    exit_code = 2


class RunAborted(Exception):
    """A run that cannot go on (e.g. too few usable clients); what was recorded so far is kept
    and the run can be resumed with ``fedbarrier run --resume RUN_DIR``."""

    exit_code = 1


class RunInterrupted(Exception):
    """A run stopped on request (SIGINT, SIGTERM) before its last round; what was recorded is
    whole and the run can be resumed. The exit status is the shell's for that signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
