"""Config validation: every bad value is a one-line UserError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbarrier.config import from_dict, load_config, parse_override, to_toml
from fedbarrier.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["data.alpha=12", "seed=3", "data.dataset=cifar10",
                             'barriers.splits=["test"]'])
    assert cfg.data.alpha == 12.0 and isinstance(cfg.data.alpha, float)
    assert cfg.seed == 3
    assert cfg.data.dataset == "cifar10"
    assert cfg.barriers.splits == ("test",)


def test_bare_words_are_strings_and_toml_values_are_parsed():
    assert parse_override("data.dataset=digits") == (["data", "dataset"], "digits")
    assert parse_override("train.lr=0.1") == (["train", "lr"], 0.1)
    assert parse_override("output.plots=false") == (["output", "plots"], False)


@pytest.mark.parametrize("override, fragment", [
    ("data.alpha=-1", "data.alpha = -1.0 must be > 0"),
    ("data.alpha=0", "data.alpha = 0.0 must be > 0"),
    ("data.dataset=mnist", "choose one of cifar10, cifar100, fashion-mnist, digits, synthetic"),
    ("data.foo=1", "unknown key 'data.foo'"),
    ("nosection.key=1", "unknown key 'nosection'"),
    ("train.rounds=1.5", "train.rounds = 1.5 must be an integer"),
    ("train.rounds=0", "train.rounds = 0 must be >= 1"),
    ("seed=true", "seed = True must be an integer"),
    ("output.plots=1", "output.plots = 1 must be true or false"),
    ('barriers.splits=["val"]', "choose one of train, test"),
    ("train.device=gpu", "use auto, cpu, cuda or cuda:N"),
    ("data.test_fraction=1.0", "must be < 1.0"),
    ("strategy.clients_per_round=11", "exceeds data.num_clients = 10"),
    ("data.synthetic_shape=[1, 8]", "must have 3 items"),
    ("train.lr=nan", "must be a finite number"),
    ("data", "must look like section.key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)


def test_resolved_config_round_trips_through_toml():
    import tomllib

    cfg = load_config(ROOT / "experiments" / "quickstart.toml", ["train.rounds=3"])
    again = from_dict(tomllib.loads(to_toml(cfg)))
    assert again == cfg
    assert cfg.name == "quickstart"


def test_every_committed_experiment_is_valid():
    files = sorted((ROOT / "experiments").glob("*.toml"))
    assert files
    for path in files:
        load_config(path)


def test_choice_lists_match_the_modules_they_name():
    # config.py keeps its own copies so that reading a config never imports torch
    from fedbarrier import config
    from fedbarrier.data import datasets as data
    from fedbarrier.learn import models
    from partitions import SCHEMES

    assert config.DATASETS == data.DATASETS
    assert config.MODELS == models.MODELS
    assert config.PARTITIONS == SCHEMES


@pytest.mark.parametrize("name", ["centralized-resnet18-paper", "centralized-vgg11-paper"])
def test_the_paper_configs_build_and_train_a_step_on_cifar_format_files(tmp_path, name):
    """The GPU configs that follow the paper: data, partition, model (the 4096-wide VGG11
    classifier), strategy, and one augmented SGD step, on generated CIFAR-10 files."""
    import torch

    from fedbarrier.data.federation import federation
    from fedbarrier.fl.simulation import preflight
    from fedbarrier.learn.local import local_update
    from fedbarrier.runtime.build import initial_model
    from tests.fixtures_data import write_fake_cifar10

    write_fake_cifar10(tmp_path, n_train=20, n_test=6)
    cfg = load_config(ROOT / "experiments" / f"{name}.toml",
                      [f"data.data_dir={str(tmp_path)!r}", "train.device='cpu'", "barriers.n=4"])
    assert cfg.train.augment == "crop-flip"
    preflight(cfg)
    fed = federation(cfg.data, cfg.seed)
    model = initial_model(cfg, fed)
    if name.startswith("centralized-vgg11"):
        assert model.classifier[0].out_features == model.classifier[3].out_features == 4096
    data = fed.client_train(0)
    stats = local_update(model, data.x[:4], data.y[:4], cfg.train, run_seed=0, client=0,
                         server_round=1, device=torch.device("cpu"), steps=1)
    assert stats.steps == 1 and not stats.diverged
