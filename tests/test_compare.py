"""fedbarrier compare: identical partitions per seed, a table over seeds, comparison plots."""

from __future__ import annotations

import csv
import json

import pytest

from fedbarrier.compare import compare, summarize
from fedbarrier.config import load_config
from fedbarrier.errors import UserError
from tests.conftest import TINY


def fake_run(path, local, glob, barrier):
    path.mkdir(parents=True)
    rows = [{"round": 0, "global_test_accuracy": 10.0},
            {"round": 1, "local_test_accuracy": local[0], "global_test_accuracy": glob[0],
             "bytes_sent": 1e6, "bytes_received": 5e5},
            {"round": 2, "local_test_accuracy": local[1], "global_test_accuracy": glob[1],
             "bytes_sent": 1e6, "bytes_received": 5e5}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rec = {"round": 2, "split": "test", "full": {"loss": barrier, "error": 2 * barrier},
           "per_layer": {"loss": {"a": {"mean": barrier / 2}, "b": {"mean": barrier / 4}}}}
    (path / "barriers.jsonl").write_text(json.dumps(rec) + "\n")
    return path


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    runs = {"fedavg": [fake_run(tmp_path / "a" / "seed-0", [50, 70], [60, 80], 0.2),
                       fake_run(tmp_path / "a" / "seed-1", [70, 90], [60, 70], 0.4)]}
    markdown, table = summarize(runs)
    # final personalized 70 and 90 -> 80 ± 14 (sample std); best equals final here
    assert "| fedavg | 2 | 80 ± 14 | 80 ± 14 | 75 ± 7.1 | 3 ± 0 | 0.3 ± 0.14 |" in markdown
    rows = list(csv.DictReader(table.splitlines()))
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert float(rows[1]["max_layer_loss"]) == pytest.approx(0.2)


@pytest.mark.slow
def test_compare_runs_strategies_on_identical_partitions(tmp_path):
    cfg = load_config(None, TINY)
    runs = compare(cfg, ["fedavg", "local"], [0], tmp_path / "cmp", progress=False)
    partitions = [(runs[s][0] / "partition.json").read_text() for s in ("fedavg", "local")]
    assert partitions[0] == partitions[1]
    for name in ("summary.md", "summary.csv", "accuracy.png", "per_layer_barriers.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    with pytest.raises(UserError, match="already holds results"):
        compare(cfg, ["fedavg"], [0], tmp_path / "cmp", progress=False)
