"""``fedbarrier analyze robustness|subspace`` on a run directory built by hand (no Ray)."""

from __future__ import annotations

import json

import pytest

from fedbarrier.cli import main
from tests.analysis.conftest import make_run

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_robustness_writes_record_and_plots(run_dir, capsys):
    # Execute
    code = main(["analyze", "robustness", str(run_dir), "--draws", "3"])
    # Assert
    assert code == 0
    record = json.loads((run_dir / "analysis" / "robustness.json").read_text())
    assert record["round"] == 2 and record["clients"] == [0, 1] and record["split"] == "test"
    assert record["layers"] == LAYERS and record["n"] == 24 and record["draws"] == 3
    for m in ("loss", "error"):
        assert set(record["interpolation"][m]) == set(LAYERS)
        assert all(len(record["random"][m][layer]["draws"]) == 3 for layer in LAYERS)
        assert (run_dir / "analysis" / f"robustness_{m}.png").stat().st_size > 10_000
    assert all(record["distance"][layer] > 0 for layer in LAYERS)
    assert "conv1" in capsys.readouterr().out


def test_robustness_of_identical_clients_is_zero(tmp_path, capsys):
    # Prepare: client 1 saved the same models as client 0
    run = make_run(tmp_path / "same", same=True)
    # Execute
    assert main(["analyze", "robustness", str(run), "--draws", "2", "--json", "--round", "1",
                 "--out", str(tmp_path / "elsewhere")]) == 0
    # Assert: printed JSON is the record (also written to --out); every increase is exactly 0
    record = json.loads(capsys.readouterr().out)
    assert record == json.loads((tmp_path / "elsewhere" / "robustness.json").read_text())
    assert not (run / "analysis").exists()
    assert record["round"] == 1
    for m in ("loss", "error"):
        assert record["interpolation"][m] == {layer: 0.0 for layer in LAYERS}
        assert all(record["random"][m][layer]["draws"] == [0.0, 0.0] for layer in LAYERS)


def test_subspace_writes_curves_for_the_model_and_each_layer(run_dir, capsys):
    # Execute
    code = main(["analyze", "subspace", str(run_dir), "--sigmas", "0.25,0.5", "1", "--draws", "2",
                 "--split", "train"])
    # Assert
    assert code == 0
    record = json.loads((run_dir / "analysis" / "subspace.json").read_text())
    assert record["sigmas"] == [0.25, 0.5, 1.0] and record["scale"] == "distance"
    assert record["scopes"] == ["model", *LAYERS] and record["split"] == "train"
    # init + 2 rounds x 2 clients; the 4 displacements are independent
    assert record["trajectory_states"] == 5 and record["trajectory_rounds"] == [1, 2]
    for scope in record["scopes"]:
        info = record["info"][scope]
        assert info["subspace_dim"] == 4
        assert info["interp_in_subspace"] == pytest.approx(1.0, abs=1e-9)
        assert info["sigma_abs"] == pytest.approx([s * info["distance"] for s in (0.25, 0.5, 1.0)])
        for kind in ("training", "null", "interpolation"):
            curve = record["curves"][scope][kind]["loss"]
            assert len(curve["mean"]) == 3 and len(curve["values"][0]) == 2
    for name in ("subspace_loss", "subspace_error", "subspace_layers_loss", "subspace_layers_error"):
        assert (run_dir / "analysis" / f"{name}.png").stat().st_size > 10_000
    assert "training subspace dim 4" in capsys.readouterr().out


def test_trajectory_stops_at_the_analysed_round(run_dir):
    main(["analyze", "subspace", str(run_dir), "--round", "1", "--sigmas", "0.5", "--draws", "1"])
    record = json.loads((run_dir / "analysis" / "subspace.json").read_text())
    assert record["trajectory_rounds"] == [1] and record["info"]["model"]["subspace_dim"] == 2


@pytest.mark.parametrize("analysis", ["robustness", "subspace"])
def test_missing_checkpoints_say_how_to_save_them(tmp_path, capsys, analysis):
    run = make_run(tmp_path / "nockpt", save=False)
    assert main(["analyze", analysis, str(run)]) == 2
    line = one_error_line(capsys)
    assert "no saved client models" in line and "--set output.save_client_models=true" in line


@pytest.mark.parametrize("args, fragment", [
    (["--round", "7"], "no checkpoints of clients 0 and 1 in round 7; saved: round 1: clients 0,1"),
    (["--clients", "0"], "--clients '0' must name two different client ids"),
    (["--clients", "0,5"], "no round with checkpoints of both clients 0 and 5"),
    (["--draws", "0"], "--draws 0 must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(run_dir, capsys, args, fragment):
    assert main(["analyze", "robustness", str(run_dir), *args]) == 2
    assert fragment in one_error_line(capsys)


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["analyze", "subspace", str(tmp_path)]) == 2
    assert "is not a run directory" in one_error_line(capsys)


def test_bad_sigmas(run_dir, capsys):
    assert main(["analyze", "subspace", str(run_dir), "--sigmas", "0.1,x"]) == 2
    assert "--sigmas" in one_error_line(capsys)


def test_subspace_towards_b_at_half_distance_is_the_robustness_midpoint(run_dir, capsys):
    # Prepare: both commands on the same run, split and sample
    main(["analyze", "robustness", str(run_dir), "--draws", "1"])
    main(["analyze", "subspace", str(run_dir), "--sigmas", "0.5", "--draws", "1"])
    robustness = json.loads((run_dir / "analysis" / "robustness.json").read_text())
    subspace = json.loads((run_dir / "analysis" / "subspace.json").read_text())
    # Assert: A − 0.5 ||A − B|| u on a layer is that layer's midpoint (up to float32 rounding)
    for layer in LAYERS:
        for m in ("loss", "error"):
            towards_b = subspace["curves"][layer]["interpolation"][m]["values"][0][1]
            assert towards_b == pytest.approx(robustness["interpolation"][m][layer], abs=1e-5)
