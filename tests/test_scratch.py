"""Scratch folders of killed runs are removed by the next run; nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbarrier.simulation import _process_start, make_scratch


def _folder(root: Path, name: str, owner: str | None) -> Path:
    folder = root / f"fedbarrier-{name}"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "x.bin").write_bytes(b"shared dataset")
    if owner is not None:
        (folder / "owner").write_text(owner)
    return folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_folders_of_dead_owners_go_and_the_rest_stay(tmp_path: Path) -> None:
    # Prepare
    me = f"{os.getpid()} {_process_start(os.getpid()) or ''}"
    killed = _folder(tmp_path, "killed", f"{_dead_pid()} 123")
    running = _folder(tmp_path, "running", me)
    unowned = _folder(tmp_path, "unowned", None)  # e.g. made by an older fedbarrier
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / "owner").write_text(f"{_dead_pid()} 1")
    # Execute
    scratch = make_scratch(str(tmp_path))
    # Assert
    assert not killed.exists()
    assert running.exists() and unowned.exists() and other.exists()
    new = Path(scratch.name)
    assert new.parent == tmp_path and new.name.startswith("fedbarrier-")
    assert (new / "owner").read_text() == me
    scratch.cleanup()
    assert not new.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_reused_pid_does_not_keep_a_folder_alive(tmp_path: Path) -> None:
    # This process's pid with another start time: the pid was reused after the owner died.
    stale = _folder(tmp_path, "stale", f"{os.getpid()} 1")
    make_scratch(str(tmp_path)).cleanup()
    assert not stale.exists()

