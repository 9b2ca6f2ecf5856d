"""The command line as a user runs it: one-line errors, exit code 2, nothing overwritten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.toml")


def fedbarrier(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "fedbarrier", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def fedbarrier_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The command in this process (a process start costs seconds): exit status and output."""
    from fedbarrier.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


@pytest.mark.parametrize("args, fragment", [
    (["--set", "data.alpha=-1"], "data.alpha = -1.0 must be > 0"),
    (["--set", "data.dataset=imagenet"], "data.dataset = 'imagenet' is not allowed"),
    (["--set", "train.unknown=3"], "unknown key 'train.unknown'"),
    (["--set", "data.num_clients=5000"], "exceeds the 1437 training examples"),
    (["--set", "data.min_partition_size=1000"], "min"),
    (["--set", "model.name=vgg11"], "vgg11"),
    (["--set", "strategy.name=nope"], "strategy.name = 'nope' is not allowed"),
    (["--set", "strategy.name=layers", "--set", 'strategy.layers=["conv9"]'], "conv9"),
    (["--set", "strategy.name=no_such_pkg.mod:Cls"], "cannot import 'no_such_pkg.mod'"),
    (["--set", "data.dataset=cifar10", "--set", "data.data_dir=/nonexistent/cifar"],
     "/nonexistent/cifar"),
    (["--set", "data.partition=pathological", "--set", "data.classes_per_client=11"],
     "classes_per_client"),
    (["--set", "barriers.splits=[]", "--set", "strategy.name=barrier-aware",
      "--set", "strategy.barrier_rule=server"], "barrier_split"),
    (["--set", "barriers.splits=['local-nope']"], "barriers.splits"),
    (["--set", "barriers.local_n=-1"], "barriers.local_n = -1"),
    (["--set", "barriers.z=-0.5"], "barriers.z = -0.5"),
    (["--set", "model.name=linear", "--set", "strategy.name=radon", "--set", "data.num_clients=4"],
     "d = 650 parameters"),  # 64 pixels x 10 classes + 10: r = 4 clients cannot do
    (["--set", "strategy.min_clients=11"], "strategy.min_clients = 11 exceeds the 10 clients"),
    (["--set", "strategy.fraction_train=0.5", "--set", "strategy.min_clients=6"],
     "exceeds the 5 clients that train each round"),
    (["--set", "train.device=cuda:7"], "train.device = 'cuda:7' but"),  # before the folder
    (["--set", "data.synthetic_train_size=12345678901234567890"], "must be <= 10000000"),
    (["--set", "seed=4294967296"], "seed = 4294967296 must be <= 4294967295"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, fragment):
    # In-process (a process start costs seconds each); the process-level behaviour, no
    # traceback and the exit status, is checked once below.
    from fedbarrier.cli import main

    code = main(["run", QUICKSTART, "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_bad_value_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = fedbarrier("run", QUICKSTART, "--out", str(tmp_path / "run"),
                        "--set", "data.alpha=-1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: data.alpha = -1.0 must be > 0"
    assert not (tmp_path / "run").exists()


def test_existing_run_is_never_overwritten_without_force(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"round": 0}\n')
    result = fedbarrier_here(capsys, "run", QUICKSTART, "--out", str(run))
    assert result.returncode == 2
    assert "already holds a run" in result.stderr
    assert (run / "metrics.jsonl").read_text() == '{"round": 0}\n'


def test_bad_config_leaves_an_existing_run_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("keep\n")
    result = fedbarrier_here(capsys, "run", QUICKSTART, "--out", str(run), "--force", "--set", "data.alpha=0")
    assert result.returncode == 2
    assert (run / "metrics.jsonl").read_text() == "keep\n"


def test_missing_config_file(tmp_path, capsys):
    result = fedbarrier_here(capsys, "run", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_corrupted_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    import torch

    good = tmp_path / "other.pt"
    torch.save({"x.weight": torch.zeros(2)}, good)
    result = fedbarrier_here(capsys, "barriers", str(bad), str(good), "--config", QUICKSTART)
    assert result.returncode == 2 and "bad.pt" in result.stderr
    assert "Traceback" not in result.stderr
    result = fedbarrier_here(capsys, "barriers", str(good), str(good), "--config", QUICKSTART)
    assert result.returncode == 2 and "does not match the config's model" in result.stderr


def test_partitions_command_prints_table_and_writes_chart(tmp_path, capsys):
    result = fedbarrier_here(capsys, "partitions", QUICKSTART, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout
    assert (tmp_path / "partitions.png").stat().st_size > 1000


def test_keys_lists_every_section(capsys):
    result = fedbarrier_here(capsys, "keys")
    assert result.returncode == 0
    for section in ("[data]", "[model]", "[train]", "[strategy]", "[barriers]", "[output]"):
        assert section in result.stdout


def test_a_config_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[train]\nrounds = 2\n")
    done = fedbarrier_here(capsys, "run", str(bad), "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and done.stderr == f"error: config file {str(bad)!r} is not UTF-8 " \
        "text (byte 0); TOML files are UTF-8\n"
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_config_is_one_line(tmp_path, capsys):
    done = fedbarrier_here(capsys, "run", str(tmp_path))
    assert done.returncode == 2 and "is a folder" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("out", ["file/run", "/proc/no-such/run"])
def test_an_out_folder_that_cannot_be_created_is_one_line(tmp_path, capsys, out):
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / out if not out.startswith("/") else Path(out)
    done = fedbarrier_here(capsys, "run", QUICKSTART, "--out", str(target))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: cannot create run directory {str(target)!r}: ")
    assert done.stderr.count("\n") == 1 and (tmp_path / "file").read_text() == "a file, not a folder"


def test_dry_run_checks_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = fedbarrier_here(capsys, "run", QUICKSTART, "--dry-run")
    assert done.returncode == 0 and "is valid" in done.stdout and list(tmp_path.iterdir()) == []
    done = fedbarrier_here(capsys, "run", QUICKSTART, "--dry-run", "--set", "data.alpha=0")
    assert done.returncode == 2 and done.stderr.startswith("error: data.alpha = 0")


def test_a_flower_without_run_simulation_is_one_line_pointing_to_flwr_run(tmp_path, capsys,
                                                                          monkeypatch):
    """flwr 1.42 deprecates the entry point `fedbarrier run` uses; a release without it must not
    end in an ImportError (or a hang): one line, exit 2, nothing written."""
    import flwr.simulation

    monkeypatch.delattr(flwr.simulation, "run_simulation")
    done = fedbarrier_here(capsys, "run", QUICKSTART, "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "has no flwr.simulation.run_simulation" in done.stderr and "`flwr run .`" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("grid, fragment", [
    (["data.alpha=0.1,-1"], "--grid data.alpha=-1: data.alpha = -1.0 must be > 0"),
    (["train.nope=1,2"], "--grid train.nope=1: unknown key 'train.nope'"),
    (["seed=1,2"], "--grid seed: vary it with --seeds"),
    (["data.alpha"], "must look like section.key=value1,value2"),
])
def test_a_bad_grid_is_one_line_exit_2_before_anything_runs(tmp_path, capsys, grid, fragment):
    args = ["compare", QUICKSTART, "--strategies", "fedavg", "--out", str(tmp_path / "cmp")]
    result = fedbarrier_here(capsys, *args, *[f"--grid={g}" for g in grid])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "cmp").exists()


def test_export_writes_tidy_tables_and_names_a_bad_folder(tmp_path, capsys, monkeypatch):
    import csv
    import json

    from tests.test_tables import LOCAL, SERVER

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"round": 0, "global_test_accuracy": 10.0}) + "\n")
    (run / "barriers.jsonl").write_text(json.dumps(SERVER) + "\n" + json.dumps(LOCAL) + "\n")
    result = fedbarrier_here(capsys, "export", str(run))
    assert result.returncode == 0
    assert result.stdout.split() == [str(run / "tables" / f"{n}.csv")
                                     for n in ("metrics", "barriers", "distances")]
    rows = list(csv.DictReader((run / "tables" / "barriers.csv").open()))
    assert {r["split"] for r in rows} == {"test", "local-test"} and rows[0]["family"] == "full"
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    result = fedbarrier_here(capsys, "export", str(run), "--format", "parquet")
    assert result.returncode == 2 and "needs pyarrow: pip install pyarrow" in result.stderr
    result = fedbarrier_here(capsys, "export", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "is not a run directory" in result.stderr
