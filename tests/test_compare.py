"""fedbarrier compare: identical partitions per seed, a table over seeds, comparison plots."""

from __future__ import annotations

import csv
import json
import math
import re
import signal
from dataclasses import replace

import pytest

from fedbarrier.compare import (
    COLUMNS,
    compare,
    main,
    run_finished,
    run_summary,
    summarize,
    summarize_folder,
)
from fedbarrier.config import load_config
from fedbarrier.errors import RunAborted, RunInterrupted, UserError
from tests.conftest import TINY


def fake_run(path, local, glob, barrier, *, spread=(5.0, 40.0), full_se=None, local_error=None):
    """A run folder with two rounds; ``local_error`` = {client id: (p, full error, its se)} adds a
    local-test record (and a skipped one after it, as a round without an average writes)."""
    path.mkdir(parents=True)
    rows = [{"round": 0, "global_test_accuracy": 10.0},
            {"round": 1, "local_test_accuracy": local[0], "global_test_accuracy": glob[0],
             "local_test_accuracy_std": 99.0, "local_test_accuracy_min": 1.0,
             "bytes_sent": 1e6, "bytes_received": 5e5},
            {"round": 2, "local_test_accuracy": local[1], "global_test_accuracy": glob[1],
             "local_test_accuracy_std": spread[0], "local_test_accuracy_min": spread[1],
             "bytes_sent": 1e6, "bytes_received": 5e5}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rec = {"round": 2, "split": "test", "full": {"loss": barrier, "error": 2 * barrier},
           "per_layer": {"loss": {"a": {"mean": barrier / 2}, "b": {"mean": barrier / 4}}}}
    if full_se is not None:
        rec["full_se"] = full_se
    records = [rec]
    if local_error is not None:
        ids = sorted(local_error, key=int)
        p = [local_error[c][0] for c in ids]
        mean = sum(local_error[c][0] * local_error[c][1] for c in ids)
        records.append({
            "round": 2, "split": "local-test", "clients": [int(c) for c in ids], "weights": p,
            "full": {"error": {"mean": mean, "max": max(v[1] for v in local_error.values()),
                               "q10": 0.0, "q50": 0.0, "q90": 0.0}},
            "by_client": {c: {"full": {"error": local_error[c][1]}, "full_se": {"error": local_error[c][2]}}
                          for c in ids}})
        records.append({"round": 3, "split": "local-test", "skipped": "no average"})
    (path / "barriers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def two_seeds(folder):
    return [fake_run(folder / "seed-0", [50, 70], [60, 80], 0.2, spread=(5.0, 40.0),
                     full_se={"loss": 0.03, "error": None},
                     local_error={"0": (0.25, 8.0, 2.0), "3": (0.75, 4.0, 1.0)}),
            fake_run(folder / "seed-1", [70, 90], [60, 70], 0.4, spread=(7.0, 60.0),
                     local_error={"0": (0.25, 16.0, 4.0), "3": (0.75, 8.0, 2.0)})]


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    runs = {"fedavg": [fake_run(tmp_path / "a" / "seed-0", [50, 70], [60, 80], 0.2),
                       fake_run(tmp_path / "a" / "seed-1", [70, 90], [60, 70], 0.4)]}
    markdown, table = summarize(runs)
    # final personalized 70 and 90 -> 80 ± 14 (sample std); best equals final here; the client
    # spread is that of the final round; records without ses add no "(se ...)"
    assert "| fedavg | 2 | 80 ± 14 | 80 ± 14 | 5 ± 0 | 40 ± 0 | 75 ± 7.1 | 3 ± 0 | 0.3 ± 0.14 |" in markdown
    assert "(se" not in markdown
    rows = list(csv.DictReader(table.splitlines()))
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert float(rows[1]["max_layer_loss"]) == pytest.approx(0.2)
    assert math.isnan(float(rows[0]["barrier_loss_se"]))


def test_client_spread_and_local_barrier_with_standard_errors(tmp_path):
    first, second = two_seeds(tmp_path / "fedavg")
    s = run_summary(first)
    assert (s["client_std"], s["worst_client"]) == (5.0, 40.0)
    assert s["barrier_loss_se"] == 0.03 and math.isnan(s["barrier_error_se"])  # null: no se
    # p-weighted mean over clients 0.25 * 8 + 0.75 * 4 = 5; se sqrt(0.25² 2² + 0.75² 1²) = sqrt(0.8125)
    assert s["local_barrier_error"] == pytest.approx(5.0)
    assert s["local_barrier_error_se"] == pytest.approx(math.sqrt(0.8125))
    assert run_summary(second)["local_barrier_error_se"] == pytest.approx(math.sqrt(3.25))

    markdown, table = summarize({"fedavg": [first, second]})
    header, _, row = markdown.splitlines()
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in row.strip("|").split("|")]))
    assert cells["client spread (std)"] == "6 ± 1.4"
    assert cells["worst client acc"] == "50 ± 14"
    # local barrier 5 and 10 over seeds; within-run se: root mean square of sqrt(0.8125), sqrt(3.25)
    assert math.sqrt((0.8125 + 3.25) / 2) == pytest.approx(1.425, abs=1e-3)
    assert cells["local full barrier, local-test error (pp)"] == "7.5 ± 3.5 (se 1.4)"
    assert cells["full barrier, test loss"] == "0.3 ± 0.14 (se 0.03)"  # the seed without se adds none
    assert cells["full barrier, test error (pp)"] == "0.6 ± 0.28"
    rows = list(csv.DictReader(table.splitlines()))
    assert list(rows[0])[2:] == ["finished"] + [key for _, key in COLUMNS] + [
        "barrier_loss_se", "barrier_error_se", "local_barrier_error_se"]
    assert [float(r["local_barrier_error_se"]) for r in rows] == pytest.approx(
        [math.sqrt(0.8125), math.sqrt(3.25)])


def test_summarize_folder_reproduces_the_summary(tmp_path):
    out = tmp_path / "cmp"
    runs = {"local": [fake_run(out / "local" / "seed-1", [60, 65], [30, 35], 0.1),
                      fake_run(out / "local" / "seed-0", [61, 66], [31, 36], 0.1)],
            "fedavg": two_seeds(out / "fedavg"),
            "plugins.mine:Strategy": [fake_run(out / "plugins.mine-Strategy" / "seed-0", [1, 2], [3, 4],
                                               0.5)]}
    markdown, table = summarize(runs)  # what compare writes, in its strategy and seed order
    (out / "summary.md").write_text("stale")
    (out / "summary.csv").write_text(table)
    (out / "fedavg" / "seed-2").mkdir()  # a run that never started: no metrics.jsonl
    assert summarize_folder(out) == runs
    assert (out / "summary.md").read_text() == markdown
    assert (out / "summary.csv").read_bytes() == table.encode()  # csv lines end in CR LF
    assert (out / "accuracy.png").stat().st_size > 1000

    (out / "summary.csv").unlink()  # without the old table: folder names, seeds in numeric order
    found = summarize_folder(out)
    assert list(found) == ["fedavg", "local", "plugins.mine-Strategy"]
    assert [p.name for p in found["local"]] == ["seed-0", "seed-1"]


def stopped(path, rounds):
    """``path`` as a run configured for ``rounds`` rounds (its records say 2 are done)."""
    (path / "config.toml").write_text(f"[train]\nrounds = {rounds}\n")
    return path


def test_runs_that_stopped_early_are_counted_apart_and_left_out_of_the_cells(tmp_path):
    first, second = two_seeds(tmp_path / "deep")
    assert run_finished(first)  # no config.toml: nothing says it stopped
    assert run_finished(stopped(first, 2)) and not run_finished(stopped(second, 6))
    markdown, table = summarize({"deep": [first, second]})
    header, _, row = markdown.splitlines()
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in row.strip("|").split("|")]))
    assert cells["seeds"] == "1 (+1 stopped)"
    assert cells["final personalized acc (%)"] == "70"  # seed 0 alone, not 80 ± 14 with seed 1
    rows = list(csv.DictReader(table.splitlines()))
    assert [r["finished"] for r in rows] == ["1", "0"]
    assert float(rows[1]["final_local"]) == 90  # the stopped run's own numbers stay in the CSV

    all_stopped, _ = summarize({"deep": [second]})
    assert "| deep | 0 (+1 stopped) | – |" in all_stopped


def test_compare_runs_every_pair_when_one_stops_and_says_so_at_the_end(tmp_path, monkeypatch):
    from fedbarrier.fl import simulation

    ran = []

    def run_experiment(cfg, out, *, force, progress):
        ran.append((cfg.strategy.name, cfg.seed))
        aborts = (cfg.strategy.name, cfg.seed) == ("deep:2", 0)
        stopped(fake_run(out, [50, 70], [60, 80], 0.2), 5 if aborts else 2)
        if aborts:
            raise RunAborted("round 3: only 0 usable client models")

    monkeypatch.setattr(simulation, "run_experiment", run_experiment)
    cfg = load_config(None, TINY)
    with pytest.raises(RunAborted, match=r"1 of 4 runs stopped early: deep:2 seed 0 \(round 3: "
                                         r"only 0 usable client models\)"):
        compare(cfg, ["fedavg", "deep:2"], [0, 1], tmp_path / "cmp", progress=False)
    assert ran == [("fedavg", 0), ("deep:2", 0), ("fedavg", 1), ("deep:2", 1)]
    assert "| deep:2 | 1 (+1 stopped) |" in (tmp_path / "cmp" / "summary.md").read_text()


def test_module_entry_point(tmp_path, capsys):
    two_seeds(tmp_path / "cmp" / "fedavg")
    assert main([str(tmp_path / "cmp")]) == 0
    assert "| fedavg | 2 |" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "summary.csv").exists()
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no runs" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_sweeps_a_grid_on_identical_partitions_and_a_rerun_reuses_every_run(tmp_path):
    cfg = load_config(None, TINY + ["train.rounds=1"])
    out = tmp_path / "cmp"
    runs = compare(cfg, ["fedavg", "local"], [0], out, progress=False,
                   grid={"data.alpha": ["0.5", "5.0"]})
    assert sorted(runs) == ["data.alpha=0.5/fedavg", "data.alpha=0.5/local",
                            "data.alpha=5.0/fedavg", "data.alpha=5.0/local"]
    partition = {key: (paths[0] / "partition.json").read_text() for key, paths in runs.items()}
    assert partition["data.alpha=0.5/fedavg"] == partition["data.alpha=0.5/local"]
    assert partition["data.alpha=0.5/fedavg"] != partition["data.alpha=5.0/fedavg"]
    assert load_config(runs["data.alpha=5.0/local"][0] / "config.toml").data.alpha == 5.0
    for name in ("summary.md", "summary.csv"):
        assert (out / name).stat().st_size > 0
    for point in ("data.alpha=0.5", "data.alpha=5.0"):
        for name in ("summary.md", "accuracy.png", "per_layer_barriers.png"):
            assert (out / point / name).stat().st_size > 0
    summary = (out / "summary.csv").read_text()
    assert summary.splitlines()[0].startswith("data.alpha,strategy,seed,finished,")
    modified = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    compare(cfg, ["fedavg", "local"], [0], out, progress=False, grid={"data.alpha": ["0.5", "5.0"]})
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == modified  # reused
    assert (out / "summary.csv").read_text() == summary
    with pytest.raises(UserError, match=r"different config \(differs in train.rounds\)"):
        compare(replace(cfg, train=replace(cfg.train, rounds=2)), ["fedavg"], [0], out,
                progress=False, grid={"data.alpha": ["0.5"]})


class FakeRuns:
    """run_experiment / resume_experiment that write a two-round fake run whose numbers depend
    on (strategy, seed, alpha); ``interrupt_at`` = n stops the n-th new run after its round 0."""

    def __init__(self, monkeypatch, interrupt_at=None):
        from fedbarrier.fl import simulation

        self.started, self.resumed, self.interrupt_at = [], [], interrupt_at
        monkeypatch.setattr(simulation, "run_experiment", self.run)
        monkeypatch.setattr(simulation, "resume_experiment", self.resume)

    @staticmethod
    def write(cfg, out, whole=True):
        import shutil

        from fedbarrier.config import to_toml

        shutil.rmtree(out, ignore_errors=True)
        score = 10 * cfg.data.alpha + cfg.seed + (5 if cfg.strategy.name == "local" else 0)
        fake_run(out, [score, score + 1], [score + 2, score + 3], score / 100)
        (out / "config.toml").write_text(to_toml(cfg))
        if not whole:  # killed after round 0
            first = (out / "metrics.jsonl").read_text().splitlines()[0]
            (out / "metrics.jsonl").write_text(first + "\n")

    def run(self, cfg, out, *, force, progress):
        self.started.append((cfg.strategy.name, cfg.seed, cfg.data.alpha))
        whole = len(self.started) != self.interrupt_at
        self.write(cfg, out, whole)
        if not whole:
            raise RunInterrupted(signal.SIGINT)

    def resume(self, path, check, *, progress):
        assert load_config(path / "config.toml") == check
        self.resumed.append((check.strategy.name, check.seed, check.data.alpha))
        self.write(check, path)


SWEEP = {"strategies": ["fedavg", "local"], "seeds": [0, 1], "grid": {"data.alpha": ["0.1", "1.0"]}}


def test_an_interrupted_sweep_run_again_finishes_with_each_run_once(tmp_path, monkeypatch):
    cfg = load_config(None, TINY)
    fake = FakeRuns(monkeypatch, interrupt_at=5)
    out = tmp_path / "cmp"
    with pytest.raises(RunInterrupted):
        compare(cfg, SWEEP["strategies"], SWEEP["seeds"], out, progress=False, grid=SWEEP["grid"])
    assert len(fake.started) == 5  # seed 0's four runs, then seed 1's first, stopped
    fake.started.clear()
    runs = compare(cfg, SWEEP["strategies"], SWEEP["seeds"], out, progress=False, grid=SWEEP["grid"])
    assert fake.resumed == [("fedavg", 1, 0.1)]  # the interrupted one, resumed
    assert fake.started == [("local", 1, 0.1), ("fedavg", 1, 1.0), ("local", 1, 1.0)]  # the rest
    assert sum(len(paths) for paths in runs.values()) == 8
    assert len(list(out.rglob("metrics.jsonl"))) == 8

    FakeRuns(monkeypatch)
    compare(cfg, SWEEP["strategies"], SWEEP["seeds"], tmp_path / "whole", progress=False,
            grid=SWEEP["grid"])
    for name in ("summary.csv", "summary.md"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["data.alpha"], r["strategy"], r["seed"]) for r in rows] == [
        (a, s, seed) for a in ("0.1", "1.0") for s in ("fedavg", "local") for seed in ("0", "1")]
    assert "| data.alpha | strategy | seeds |" in (out / "summary.md").read_text()
    # the folder summarizes again without running, and loads as a comparison
    assert summarize_folder(out).keys() == runs.keys()
    from fedbarrier.api import load_comparison

    loaded = load_comparison(out)
    assert set(loaded.metrics["data.alpha"]) == {"0.1", "1.0"} and len(loaded.summary) == 8
    assert set(loaded.barriers["strategy"]) == {"fedavg", "local"}


@pytest.mark.parametrize("grid, message", [
    (["data.alpha"], "must look like section.key=value1,value2"),
    (["data.alpha=0.1", "data.alpha=0.5"], "data.alpha is given twice"),
    (["seed=1,2"], "vary it with --seeds"),
    (["strategy.name=fedavg,local"], "vary it with --strategies"),
    (["data.alpha=0.1,0.1"], "repeats a value"),
    (["data.alpha=0.1,"], "values must be non-empty"),
    (["data.alpha=a/b"], "hold no '/'"),
])
def test_bad_grid_specs_are_one_line_errors(grid, message):
    from fedbarrier.compare import parse_grid

    with pytest.raises(UserError, match=re.escape(message)):
        parse_grid(grid)


@pytest.mark.parametrize("grid, message", [
    ({"data.alpha": ["0.5", "-1"]}, "--grid data.alpha=-1: "),
    ({"data.nope": ["1"]}, "--grid data.nope=1: "),
    ({"train.rounds": ["2", "x"]}, "--grid train.rounds=x: "),
])
def test_bad_grid_values_stop_before_anything_runs(tmp_path, monkeypatch, grid, message):
    fake = FakeRuns(monkeypatch)
    with pytest.raises(UserError, match=re.escape(message)):
        compare(load_config(None, TINY), ["fedavg"], [0], tmp_path / "cmp", progress=False, grid=grid)
    assert fake.started == [] and not (tmp_path / "cmp").exists()


def test_split_on_commas_outside_brackets():
    from fedbarrier.compare import parse_grid

    assert parse_grid(['barriers.splits=["test"],["train","test"]']) == {
        "barriers.splits": ['["test"]', '["train","test"]']}
