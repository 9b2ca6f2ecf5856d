"""Scratch folders of killed runs are removed by the next run; those of live runs never are."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedbarrier.runtime.scratch import OWNER, make_scratch

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, name: str, owner: bool) -> Path:
    folder = root / f"fedbarrier-{name}"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "x.bin").write_bytes(b"shared dataset")
    if owner:
        (folder / OWNER).write_text("12345\n")  # nobody holds it locked: its run was killed
    return folder


def _run_holding_a_scratch(root: Path, prefix: tuple[str, ...] = ()
                           ) -> tuple[subprocess.Popen, Path]:
    """Another process (as another run would) that makes a scratch folder and stays alive."""
    code = ("import sys, time; from fedbarrier.runtime.scratch import make_scratch; "
            f"s = make_scratch({str(root)!r}); print(s.name, flush=True); time.sleep(60)")
    proc = subprocess.Popen([*prefix, sys.executable, "-c", code], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_abandoned_folders_go_and_live_or_foreign_ones_stay(tmp_path: Path) -> None:
    # Prepare
    killed = _folder(tmp_path, "killed", owner=True)
    unowned = _folder(tmp_path, "unowned", owner=False)  # e.g. made by an older fedbarrier
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / OWNER).write_text("1\n")
    live, live_folder = _run_holding_a_scratch(tmp_path)
    try:
        # Execute
        scratch = make_scratch(str(tmp_path))
        # Assert
        assert not killed.exists()
        assert live_folder.is_dir() and unowned.exists() and other.exists()
        new = Path(scratch.name)
        assert new.parent == tmp_path and (new / OWNER).read_text() == f"{os.getpid()}\n"
        with open(new / OWNER) as owner:  # locked while the run lives
            try:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("a live run's owner file must be locked")
            except BlockingIOError:
                pass
        scratch.cleanup()
        assert not new.exists()
        # kill -9 releases the lock: the next run removes the folder
        live.send_signal(signal.SIGKILL)
        live.wait()
        assert live_folder.is_dir()
        make_scratch(str(tmp_path)).cleanup()
        assert not live_folder.exists()
    finally:
        live.kill()
        live.wait()


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-pf", "--mount-proc", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare (Linux, privileges)")
def test_a_live_run_in_another_pid_namespace_keeps_its_folder(tmp_path: Path) -> None:
    # A container sharing /tmp: its pids mean nothing here, its lock does.
    live, folder = _run_holding_a_scratch(tmp_path, ("unshare", "-pf", "--mount-proc", "--kill-child"))
    try:
        make_scratch(str(tmp_path)).cleanup()
        assert folder.is_dir()
    finally:
        live.kill()
        live.wait()
