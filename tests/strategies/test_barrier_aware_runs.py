"""barrier-aware personalization end to end: every client decides by its own local barriers,
and the recorded decisions are the ones its saved models give when recomputed."""

from __future__ import annotations

import json

import pytest
import torch

from fedbarrier.config import load_config
from fedbarrier.fl.client_measure import adoption
from fedbarrier.fl.simulation import run_experiment
from fedbarrier.runtime.build import model_layers
from tests.conftest import TINY

pytestmark = pytest.mark.slow


def test_clients_adopt_layers_by_local_barrier_and_the_records_say_which(tmp_path):
    cfg = load_config(None, [*TINY, "strategy.name=barrier-aware",
                             "output.save_client_models=true", "barriers.splits=['local-train']"])
    out = tmp_path / "run"
    run_experiment(cfg, out, progress=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    layers = list(model_layers(cfg))
    first = metrics[1]["adopted_layers"]
    assert first == {str(c): layers for c in range(3)}  # no own model yet: everything
    for m in metrics[2:]:
        r = m["round"]
        assert sorted(m["adopted_layers"]) == ["0", "1", "2"]
        previous = out / "checkpoints" / f"round-{r - 1:04d}"
        average = torch.load(previous / "global.pt", weights_only=True)
        for client, adopted in m["adopted_layers"].items():
            own = torch.load(previous / f"client-{client}.pt", weights_only=True)
            decided = adoption(cfg, int(client), own, average, torch.device("cpu"))
            assert adopted == decided.layers, (r, client)
            assert set(adopted) <= set(layers)
    # the server-side barriers are off (only a local split): only local records
    splits = {json.loads(line)["split"] for line in (out / "barriers.jsonl").read_text().splitlines()}
    assert splits == {"local-train"}
