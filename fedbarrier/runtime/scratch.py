"""A run's scratch folder (Ray's session files, the dataset shared with the workers), and the
removal of those left behind by killed runs.

A run removes its own folder when it ends, even after an error; a killed process (kill -9, the
out-of-memory killer) cannot, and the folder holds the shared dataset (600 MB for CIFAR-10, often
in a RAM-backed /tmp). So each run holds an exclusive ``flock`` on the folder's ``owner`` file
for as long as it lives, and the next run removes every ``fedbarrier-*`` folder whose lock it can
take. The kernel releases a lock when its process dies, however it dies, and a lock means the
same in every pid namespace and container that shares the folder; pids would not. Folders
without an owner file (other tools, older fedbarrier) are left alone. Ray's dashboard and
runtime-env agents outlive a killed run too, but exit by themselves within ~2 minutes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no flock; killed runs' folders stay (Ray itself is experimental)
    fcntl = None  # type: ignore[assignment]

OWNER = "owner"  # in a scratch folder: locked by the run that uses it; holds its pid (for people)


class Scratch:
    """A scratch folder that is locked until :meth:`cleanup` removes it."""

    def __init__(self, root: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fedbarrier-", dir=root,
                                                ignore_cleanup_errors=True)
        self.name = self._dir.name
        # Locked before it gets its name, so no other run ever sees an unlocked owner file.
        claiming = Path(self.name) / f".{OWNER}"
        self._lock: IO[str] | None = open(claiming, "w")  # noqa: SIM115 (held until cleanup)
        if fcntl is not None:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        claiming.rename(Path(self.name) / OWNER)

    def cleanup(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None
        self._dir.cleanup()


def _abandoned(folder: Path) -> bool:
    """True if ``folder`` has an owner file that no living process holds locked."""
    if fcntl is None:
        return False
    try:
        with open(folder / OWNER, "rb") as owner:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no owner file, not ours to read, or locked: a live run
        return False
    return True


def make_scratch(root: str) -> Scratch:
    """A new, locked scratch folder under ``root``, after removing the abandoned ones there."""
    for folder in Path(root).glob("fedbarrier-*"):
        if _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
    return Scratch(root)
