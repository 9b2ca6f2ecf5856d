"""docs/notebook.py, the documented notebook, executed end to end on a tiny 2-round run."""

from __future__ import annotations

import runpy
import shlex
from pathlib import Path

import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_notebook_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the notebook names files relative to the repository
    monkeypatch.setenv("FEDBARRIER_NOTEBOOK_SET", shlex.join(TINY + ["train.rounds=2"]))
    monkeypatch.setenv("FEDBARRIER_NOTEBOOK_OUT", str(tmp_path / "run"))
    cells = runpy.run_path(str(ROOT / "docs" / "notebook.py"), run_name="__main__")
    assert cells["run"].metrics["round"].tolist() == [0, 1, 2]
    assert list(cells["per_layer"].columns) == [1, 2]  # measured rounds
    assert list(cells["per_layer"].index) == ["conv1", "conv2", "fc1", "fc2"]  # model order
    assert cells["figure"].axes
    assert [p.name for p in cells["written"]] == ["metrics.csv", "barriers.csv", "distances.csv"]
    assert (tmp_path / "run" / "tables" / "barriers.csv").stat().st_size > 0
