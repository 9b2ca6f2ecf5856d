"""The apps that `flwr run` starts find their experiment file wherever Flower starts them."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from fedbarrier.fl.client_app import config_from_context


def test_a_relative_config_path_falls_back_to_the_bundled_experiments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Flower starts apps in the SuperNode's folder, not the repo
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={"config": "experiments/quickstart.toml", "set": "train.rounds=2"})
    cfg = config_from_context(context)
    assert cfg.data.dataset == "digits" and cfg.train.rounds == 2
