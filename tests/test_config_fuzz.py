"""Random values for every config key through ``--set``: one line and exit 2, or a valid config
(exit 0) — never a traceback, a hang or a file written."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

from fedbarrier import cli
from fedbarrier.config import Config, load_config, to_toml
from tests.conftest import TINY

# What users (and their scripts) type: types, bounds, NaN, infinities, huge, empty, unicode.
VALUES = ["0", "-1", "1", "2", "7", "100000", "10000000000", "1e400", "-1e400", "nan", "inf",
          "-inf", "0.5", "-0.5", "1.0", "1e-300", "true", "false", "''", "'x'", "'é✓'", "'../x'",
          "[]", "[1]", "[0, 0, 0]", "[1, 8, 8]", "[100000, 100000, 100000]", "['test']",
          "['é']", "{}", "'cuda:7'", "'cpu'", "'dirichlet'", "'synthetic'", "'fedper'",
          "'shallow:2'", "'x:y'", "'a.b:C'", "12345678901234567890", "1979-05-27"]


def keys() -> list[str]:
    out = []
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(f.type) or f.name in {"data", "model", "train", "strategy",
                                                           "simulation", "barriers", "output"}:
            section = getattr(Config(), f.name)
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(section)]
        else:
            out.append(f.name)
    return out


def cases(seed: int = 0) -> list[str]:
    """``FEDBARRIER_FUZZ_PER_KEY`` values per key (default 4; all of them: 40)."""
    per_key = min(len(VALUES), int(os.environ.get("FEDBARRIER_FUZZ_PER_KEY", "4")))
    rng = random.Random(seed)
    return [f"{key}={value}" for key in keys() for value in rng.sample(VALUES, per_key)]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "tiny.toml"
    path.write_text(to_toml(load_config(None, TINY + ["simulation.ray_address=''"])))
    return path


def test_every_key_is_fuzzed():
    assert "data.alpha" in keys() and "barriers.z" in keys() and "seed" in keys()
    assert len(keys()) > 50


@pytest.mark.parametrize("override", cases())
def test_a_random_value_is_a_valid_config_or_one_line(override, tiny_config, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(["run", str(tiny_config), "--set", override, "--dry-run"])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    assert code in (0, 2), (override, err)
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, (override, err)
    else:
        assert "is valid" in out, (override, out, err)
    assert list(tmp_path.iterdir()) == [], override  # nothing written
