"""End to end through Flower's simulation engine on Ray: records, determinism, recomputation."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedbarrier.config import load_config
from fedbarrier.data.federation import federation, server_sample
from fedbarrier.fl import simulation
from fedbarrier.fl.simulation import run_experiment
from fedbarrier.measure.layers import layer_groups
from fedbarrier.runtime.build import initial_model
from fedbarrier.runtime.rundir import without_timings as timings_dropped
from tests.conftest import ON_RAY, TINY

# One process builds the module's tiny run and runs every test that reads it.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny-run")]
def without_timings(records):
    return [timings_dropped(r) for r in records]


def read(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# Two workers train and measure in parallel (as in real runs): records must not depend on timing.
TINY_OVERRIDES = [*TINY, *ON_RAY, "output.save_client_models=true", "simulation.num_cpus=1"]


@pytest.fixture(scope="module")
def tiny_run_scratch(tmp_path_factory):
    """The tiny run, with the folder it was given for its scratch files (a short path: Ray's
    sockets live inside)."""
    cfg = load_config(None, TINY_OVERRIDES)
    out = tmp_path_factory.mktemp("runs") / "a"
    scratch = Path(tempfile.mkdtemp(prefix="fbt-", dir=simulation.scratch_root()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulation, "scratch_root", lambda: str(scratch))
        patch.delenv("RAY_ADDRESS", raising=False)  # the default path: a private Ray instance
        run_experiment(cfg, out, progress=False)
    yield cfg, out, scratch
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_run(tiny_run_scratch):
    cfg, out, _ = tiny_run_scratch
    return cfg, out


def test_run_directory_holds_every_record(tiny_run):
    cfg, out = tiny_run
    for name in ("config.toml", "run.json", "partition.json", "metrics.jsonl", "barriers.jsonl"):
        assert (out / name).is_file(), name
    metrics = read(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    last = metrics[-1]
    for key in ("train_loss", "global_test_loss", "global_test_accuracy", "local_test_accuracy",
                "wall_seconds", "bytes_sent", "bytes_received"):
        assert isinstance(last[key], (int, float)), key
    assert last["clients"] == [0, 1, 2]
    by_client = last["local_test_accuracy_by_client"]
    assert sorted(by_client) == ["0", "1", "2"]
    assert last["local_test_accuracy_min"] == min(by_client.values())
    assert last["local_test_accuracy_std"] >= 0
    assert last["bytes_received"] > 0 and last["bytes_sent"] > last["bytes_received"]
    barriers = read(out / "barriers.jsonl")
    # per round: the server's splits, then the clients' local ones (one order, whatever the timing)
    assert [(b["round"], b["split"]) for b in barriers] == [
        (r, s) for r in (1, 2) for s in ("train", "test", "local-train", "local-test")]
    b = barriers[-3]
    assert set(b["per_layer"]) == {"loss", "error"}
    assert len(b["shallow"]["loss"]) == len(b["layers"]) == len(b["deep"]["error"])
    ckpt = out / "checkpoints" / "round-0002"
    assert sorted(p.name for p in ckpt.iterdir()) == ["client-0.pt", "client-1.pt",
                                                       "client-2.pt", "global.pt"]


def test_clients_inline_give_the_numbers_of_clients_in_ray_workers(tiny_run, tmp_path):
    """simulation.backend = "inline" (what most tests use) runs the same ClientApp through the
    same Flower engine in this process: every recorded number and every saved model equals the
    Ray run's."""
    cfg, out = tiny_run
    inline = tmp_path / "inline"
    run_experiment(replace(cfg, simulation=replace(cfg.simulation, backend="inline")), inline,
                   progress=False)
    for name in ("metrics.jsonl", "barriers.jsonl"):
        assert without_timings(read(inline / name)) == without_timings(read(out / name)), name
    saved = sorted(p.relative_to(out) for p in (out / "clients").rglob("*.pt"))
    assert saved and saved == sorted(p.relative_to(inline) for p in (inline / "clients").rglob("*.pt"))
    for path in saved:
        assert same(torch.load(inline / path), torch.load(out / path)), path


def same(a, b) -> bool:
    """Equal nested dicts of tensors (and plain values), tensors bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(a == b)


def test_ray_is_shut_down_after_a_run(tiny_run):
    import ray

    assert not ray.is_initialized()


def test_a_run_leaves_no_scratch_files(tiny_run_scratch):
    """Ray's session folder and the dataset shared with the workers go when the run ends."""
    _, _, scratch = tiny_run_scratch
    assert list(scratch.iterdir()) == []


def test_same_config_and_seed_give_identical_numbers_on_a_joined_cluster(
        tiny_run, tmp_path, monkeypatch, ray_cluster):
    """The tiny run again, on an existing Ray cluster named by ``simulation.ray_address`` (the
    session's, conftest.py) instead of a private instance: the same numbers, and the cluster
    outlives the run. Without a session cluster, the same numbers on the default path."""
    cfg, out = tiny_run
    ray_bin = shutil.which("ray")
    again = tmp_path / "b"
    if ray_cluster is None or ray_bin is None:
        run_experiment(cfg, again, progress=False)
    else:
        monkeypatch.delenv("RAY_ADDRESS")  # the config alone names the cluster
        run_experiment(replace(cfg, simulation=replace(cfg.simulation, ray_address=ray_cluster)),
                       again, progress=False)
        status = subprocess.run([ray_bin, "status", f"--address={ray_cluster}"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, "the cluster should outlive the run"
    assert without_timings(read(out / "metrics.jsonl")) == without_timings(
        read(again / "metrics.jsonl"))
    assert without_timings(read(out / "barriers.jsonl")) == without_timings(
        read(again / "barriers.jsonl"))


def reference_loss(model, state, x, y):
    """A straightforward forward pass on a deep copy: no tensor swapping, no sharing."""
    loss, error = _deep_copy_scores(model, state, x, y)
    return float(loss.mean()), float(error.mean())


def test_recorded_barriers_recompute_from_saved_checkpoints(tiny_run):
    cfg, out = tiny_run
    record = [b for b in read(out / "barriers.jsonl") if b["split"] == "test"][-1]
    ckpt = out / "checkpoints" / f"round-{record['round']:04d}"
    states = [torch.load(ckpt / f"client-{c}.pt", weights_only=True) for c in record["clients"]]
    counts = record["num_examples"]
    p = [c / sum(counts) for c in counts]
    fed = federation(cfg.data, cfg.seed)
    model = initial_model(cfg, fed)
    x, y = server_sample(fed, "test", record["clients"], cfg.barriers.n, cfg.seed)
    assert len(y) == record["n"]

    endpoint = [reference_loss(model, s, x, y) for s in states]
    ref = [sum(pk * e[i] for pk, e in zip(p, endpoint)) for i in (0, 1)]
    avg = {k: sum(pk * s[k].double() for pk, s in zip(p, states)).float() for k in states[0]}
    full = reference_loss(model, avg, x, y)
    assert record["full"]["loss"] == pytest.approx(full[0] - ref[0], abs=1e-4)
    assert record["full"]["error"] == pytest.approx(full[1] - ref[1], abs=1e-4)

    groups = layer_groups(model, x[:2])
    for layer, keys in groups.items():
        for d, state in enumerate(states):
            mixed = {k: (avg[k] if k in keys else v) for k, v in state.items()}
            want = reference_loss(model, mixed, x, y)[0] - ref[0]
            got = record["per_layer"]["loss"][layer]["per_default"][d]
            assert got == pytest.approx(want, abs=1e-4), (layer, d)
    names = list(groups)
    k = 2
    shallow = set(k for layer in names[:k] for k in groups[layer])
    mixed = {kk: (avg[kk] if kk in shallow else v) for kk, v in states[1].items()}
    want = reference_loss(model, mixed, x, y)[0] - ref[0]
    assert record["shallow"]["loss"][k - 1]["per_default"][1] == pytest.approx(want, abs=1e-4)


def test_offline_barriers_command_measures_the_same_models(tiny_run, capsys):
    from fedbarrier.offline import measure_checkpoints

    cfg, out = tiny_run
    ckpt = out / "checkpoints" / "round-0002"
    rec = measure_checkpoints(cfg, [ckpt / f"client-{c}.pt" for c in range(3)], split="test",
                              as_json=True)
    assert json.loads(capsys.readouterr().out)["full"] == rec["full"]
    assert len(rec["endpoint"]["loss"]) == 3


def _deep_copy_scores(model, state, x, y):
    """Per-example (cross-entropy, 100 * misclassified) of ``state`` by a plain deep copy."""
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    m.eval()
    with torch.no_grad():
        logits = m(x)
    return (F.cross_entropy(logits, y, reduction="none").double(),
            100.0 * (logits.argmax(1) != y).double())


def test_local_barriers_recompute_from_saved_checkpoints(tiny_run):
    # The independent check of the clients' own measurement: each client's returned model and
    # the round's average, scored on the client's own sample by a plain deep copy.
    from fedbarrier.data.federation import client_sample

    cfg, out = tiny_run
    records = read(out / "barriers.jsonl")
    server = [b for b in records if b["split"] == "train"][-1]
    r = server["round"]
    counts = server["num_examples"]
    p = [c / sum(counts) for c in counts]
    ckpt = out / "checkpoints" / f"round-{r:04d}"
    states = {c: torch.load(ckpt / f"client-{c}.pt", weights_only=True) for c in server["clients"]}
    avg = {k: sum(pk * s[k].double() for pk, s in zip(p, states.values())).float()
           for k in states[server["clients"][0]]}
    fed = federation(cfg.data, cfg.seed)
    model = initial_model(cfg, fed)
    groups = layer_groups(model, fed.splits.test.x[:2])
    names = list(groups)
    checked = 0
    for split in ("local-train", "local-test"):
        record = next(b for b in records if b["round"] == r and b["split"] == split)
        assert record["clients"] == server["clients"] and record["skipped_clients"] == {}
        for c in record["clients"]:
            got = record["by_client"][str(c)]
            x, y = client_sample(fed, c, split, cfg.barriers.local_n, cfg.seed)
            assert got["n"] == len(y)
            own = _deep_copy_scores(model, states[c], x, y)

            def delta(layers, own=own, x=x, y=y, c=c):
                keys = {k for layer in layers for k in groups[layer]}
                mixed = {k: (avg[k] if k in keys else v) for k, v in states[c].items()}
                return [a - b for a, b in zip(_deep_copy_scores(model, mixed, x, y), own)]

            full = delta(names)
            for i, metric in enumerate(("loss", "error")):
                assert got["full"][metric] == pytest.approx(float(full[i].mean()), abs=1e-4)
                se = float(full[i].std(unbiased=True) / len(y) ** 0.5)
                assert got["full_se"][metric] == pytest.approx(se, abs=1e-4)
                for layer in names:
                    want = float(delta([layer])[i].mean())
                    assert got["per_layer"][metric][layer] == pytest.approx(want, abs=1e-4)
                want = float(delta(names[:2])[i].mean())
                assert got["shallow"][metric][1] == pytest.approx(want, abs=1e-4)
                want = float(delta(names[-2:])[i].mean())
                assert got["deep"][metric][1] == pytest.approx(want, abs=1e-4)
            checked += 1
        mean = sum(pk * record["by_client"][str(c)]["full"]["loss"]
                   for pk, c in zip(p, record["clients"]))
        assert record["full"]["loss"]["mean"] == pytest.approx(mean, abs=1e-9)
    assert checked == 2 * len(server["clients"])


def test_every_round_records_local_barriers_with_their_mean_in_the_metrics(tiny_run):
    cfg, out = tiny_run
    local = [(b["round"], b["split"]) for b in read(out / "barriers.jsonl")
             if b["split"].startswith("local")]
    assert local == [(r, s) for r in (1, 2) for s in ("local-train", "local-test")]
    for m in read(out / "metrics.jsonl")[1:]:
        for split in ("local-train", "local-test"):
            assert isinstance(m[f"barrier_local_full_{split}_error"], float)


def test_tensorboard_events_hold_every_round_scalar_and_barrier_family(tiny_run):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedbarrier.outputs.tensorboard import metric_tag
    from tests.conftest import tensorboard_scalars

    cfg, out = tiny_run
    scalars = {tag: dict(points) for tag, points in tensorboard_scalars(out).items()}
    assert all(len(points) == len(dict(points)) for points in tensorboard_scalars(out).values())
    f32 = lambda v: float(np.float32(v))  # noqa: E731  (TensorBoard stores float32)
    metrics = read(out / "metrics.jsonl")
    for rec in metrics:
        for key, value in rec.items():
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
                assert scalars[metric_tag(key)][rec["round"]] == f32(value), (key, rec["round"])
    assert sorted(scalars["accuracy/global_test_accuracy"]) == [0, 1, 2]
    for rec in read(out / "barriers.jsonl"):
        r, split = rec["round"], rec["split"]
        if split == "test":
            assert scalars["barrier_full/test_loss"][r] == f32(rec["full"]["loss"])
            for i, layer in enumerate(rec["layers"], 1):  # one line per layer in one family
                assert (scalars[f"barrier_per_layer_test_error/{i:02d}_{layer}"][r]
                        == f32(rec["per_layer"]["error"][layer]["mean"]))
            last = rec["layers"][-1]
            assert (scalars[f"barrier_shallow_test_loss/{len(rec['layers']):02d}_+{last}"][r]
                    == f32(rec["shallow"]["loss"][-1]["mean"]))
        if split == "local-test":
            for stat in ("mean", "q10", "q50", "q90", "max"):
                assert (scalars[f"local_barrier_full_local-test_error/{stat}"][r]
                        == f32(rec["full"]["error"][stat]))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    [text] = events.Tensors("config/text_summary")
    assert "data.alpha" not in text.tensor_proto.string_val[0].decode()  # TOML, by section
    assert "alpha = 0.5" in text.tensor_proto.string_val[0].decode()
    assert "custom_scalars__config__" in events.Tags()["tensors"]


def test_final_plots_become_tensorboard_images(tiny_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedbarrier.outputs.tensorboard import write_images
    from fedbarrier.plots import plot_run

    _, out = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("checkpoints", "clients", "state"))
    plots = plot_run(run)
    write_images(run, plots, step=2)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"plots/{p.stem}" for p in plots)
    [image] = events.Images("plots/per_layer_test_loss")
    assert image.step == 2 and image.width > 100 and image.encoded_image_string[:4] == b"\x89PNG"


def test_load_run_tables_hold_every_recorded_barrier_number(tiny_run):
    import fedbarrier
    from tests.test_tables import barrier_numbers

    _, out = tiny_run
    run = fedbarrier.load_run(out)
    records = read(out / "barriers.jsonl")
    assert sorted(run.barriers["value"].tolist()) == pytest.approx(
        sorted(v for rec in records for v in barrier_numbers(rec)), nan_ok=True)
    assert len(run.barriers) == sum(len(barrier_numbers(rec)) for rec in records)
    assert run.metrics["round"].tolist() == [0, 1, 2]
    assert run.config.data.num_clients == 3
    mean = run.barriers.query("split == 'test' and family == 'full' and metric == 'error'")
    assert mean["value"].tolist() == [rec["full"]["error"] for rec in records if rec["split"] == "test"]
    assert run.plot("per_layer", split="local-test", metric="error").axes


def test_aligned_barriers_on_the_server_and_on_every_client(tmp_path):
    """barriers.align: every record, server-side and local, holds its values after alignment;
    alignment keeps each model's function, so every client's own loss is unchanged by it."""
    cfg = load_config(None, [*TINY, "train.rounds=1", "barriers.align=weight-matching",
                             "train.client_init=own", "strategy.name=local"])  # different inits
    run_experiment(cfg, tmp_path / "run", progress=False)
    records = {b["split"]: b for b in read(tmp_path / "run" / "barriers.jsonl")}
    server = records["test"]["aligned"]
    sizes = records["test"]["num_examples"]
    assert server["aligned_to"] == records["test"]["clients"][sizes.index(max(sizes))]
    assert set(server["full"]) == {"loss", "error"} and server["per_layer"]["loss"]
    # aligned models lie closer together than the unaligned ones (different initializations)
    assert (server["distances"]["model"]["pairwise_l2"]
            < records["test"]["distances"]["model"]["pairwise_l2"])
    for split in ("local-train", "local-test"):
        rec = records[split]
        assert rec["aligned"]["aligned_to"] == server["aligned_to"]
        for client, report in rec["by_client"].items():
            mine = rec["aligned"]["by_client"][client]
            assert mine["endpoint"]["loss"] == pytest.approx(report["endpoint"]["loss"], rel=1e-5)
            assert mine["full"]["loss"] != report["full"]["loss"]  # another average
    metrics = read(tmp_path / "run" / "metrics.jsonl")[-1]
    assert metrics["barrier_full_aligned_test_loss"] == server["full"]["loss"]
    assert metrics["barrier_local_full_aligned_local-test_error"] == \
        records["local-test"]["aligned"]["full"]["error"]["mean"]
    assert metrics["bytes_instrumentation"] > 0
    import fedbarrier

    table = fedbarrier.load_run(tmp_path / "run").barriers
    assert set(table[table["aligned"]]["split"]) == {"train", "test", "local-train", "local-test"}
