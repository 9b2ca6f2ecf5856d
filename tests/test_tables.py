"""The tidy tables of fedbarrier.outputs.tables: hand-made records in, exact rows out."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fedbarrier.outputs.tables import barrier_table, distance_table, metrics_table


def summary(a, b, mean, mx, sr=(0.0, 0.0), se=(0.01, 0.02), se_mean=0.015):
    return {"per_default": [a, b], "mean": mean, "max": mx, "self_referenced": list(sr),
            "se": {"mean": se_mean, "per_default": list(se), "self_referenced": [0.03, 0.04]}}


# Two clients (ids 4 and 7), two layers, a window of size 1 and one random order.
SERVER = {
    "round": 3, "split": "test", "clients": [4, 7], "num_examples": [10, 30], "n": 50,
    "layers": ["conv", "fc"], "weights": [0.25, 0.75], "defaults": [0, 1], "default_clients": [4, 7],
    "endpoint": {"loss": [1.0, 2.0]}, "reference": {"loss": 1.75},
    "full": {"loss": 0.5}, "full_se": {"loss": 0.05},
    "per_layer": {"loss": {"conv": summary(0.1, 0.2, 0.175, 0.2), "fc": summary(0.3, 0.4, 0.375, 0.4)}},
    "shallow": {"loss": [summary(0.1, 0.2, 0.175, 0.2), summary(0.5, 0.5, 0.5, 0.5)]},
    "deep": {"loss": [summary(0.3, 0.4, 0.375, 0.4), summary(0.5, 0.5, 0.5, 0.5)]},
    "window": {"size": 1, "loss": [summary(0.1, 0.2, 0.175, 0.2), summary(0.3, 0.4, 0.375, 0.4)]},
    "random": {"orders": [["fc", "conv"]],
               "loss": [[summary(0.3, 0.4, 0.375, 0.4), summary(0.5, 0.5, 0.5, 0.5)]]},
    "curve": {"loss": {"pair": [0, 1], "alphas": [0.0, 0.5, 1.0], "values": [1.0, 2.5, 2.0],
                       "barrier": [0.0, 1.0, 0.0], "max": 1.0, "se": [0.0, 0.1, 0.0]}},
    "evaluated": {"full": {"loss": 2.25}}, "num_evaluated": 9, "seconds": 0.1,
    "distances": {"conv": {"l2_to_avg": [0.5, 0.25], "pairwise_l2": 0.75},
                  "model": {"l2_to_avg": [1.5, 0.5], "pairwise_l2": 2.0}},
}

LOCAL = {
    "round": 3, "split": "local-test", "clients": [4, 7], "weights": [0.25, 0.75],
    "skipped_clients": {}, "missing_clients": [],
    "endpoint": {"error": {"mean": 12.5, "max": 20.0, "q10": 11.0, "q50": 15.0, "q90": 19.0}},
    "full": {"error": {"mean": 3.0, "max": 4.0, "q10": 1.2, "q50": 2.5, "q90": 3.8}},
    "per_layer": {"error": {"conv": {"mean": 1.0, "max": 2.0, "q10": 0.2, "q50": 1.0, "q90": 1.8},
                            "fc": {"mean": 0.5, "max": 1.0, "q10": 0.1, "q50": 0.5, "q90": 0.9}}},
    "shallow": {"error": [{"mean": 1.0, "max": 2.0, "q10": 0.2, "q50": 1.0, "q90": 1.8},
                          {"mean": 3.0, "max": 4.0, "q10": 1.2, "q50": 2.5, "q90": 3.8}]},
    "by_client": {
        "4": {"n": 10, "layers": ["conv", "fc"], "endpoint": {"error": 20.0},
              "full": {"error": 4.0}, "full_se": {"error": 0.4},
              "per_layer": {"error": {"conv": 2.0, "fc": 1.0}},
              "per_layer_se": {"error": {"conv": 0.2, "fc": 0.1}},
              "shallow": {"error": [2.0, 4.0]}, "shallow_se": {"error": [0.2, 0.4]}},
        "7": {"n": 30, "layers": ["conv", "fc"], "endpoint": {"error": 10.0},
              "full": {"error": 2.667}, "full_se": {"error": 0.3},
              "per_layer": {"error": {"conv": 0.667, "fc": 0.333}},
              "per_layer_se": {"error": {"conv": 0.1, "fc": 0.05}},
              "shallow": {"error": [0.667, 2.667]}, "shallow_se": {"error": [0.1, 0.3]}},
    },
}


def row(table: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        column = table[key]
        mask &= column.isna() if value is None else (column == value).fillna(False)
    found = table[mask]
    assert len(found) == 1, f"{len(found)} rows match {where}"
    return found.iloc[0]


def barrier_numbers(rec) -> list[float]:
    """Every barrier number a record holds (not its ses, not its inputs or metadata): what the
    tidy table must hold, one row each."""
    out: list[float] = []

    def walk(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                if key not in ("se", "size", "orders", "pair", "alphas"):
                    walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)
        elif isinstance(value, (int, float)):
            out.append(float(value))

    families = ["full", "per_layer", "shallow", "deep", "window", "random", "endpoint", "reference",
                "curve"]
    for family in families:
        walk(rec.get(family))
    for report in (rec.get("by_client") or {}).values():
        for family in ("endpoint", "full", "per_layer", "shallow", "deep"):
            walk(report.get(family))
    return sorted(out)


@pytest.mark.parametrize("rec", [SERVER, LOCAL], ids=["server", "local"])
def test_one_row_per_recorded_number(rec):
    table = barrier_table([rec])
    assert sorted(table["value"].tolist()) == barrier_numbers(rec)
    assert table["metric"].notna().all() and table["family"].notna().all()
    assert not table.map(lambda v: isinstance(v, (dict, list))).any().any()  # nothing nested


def test_server_rows_name_their_layer_set_client_and_se():
    table = barrier_table([SERVER])
    full = row(table, family="full", metric="loss")
    assert (full["value"], full["se"], full["stat"], full["layer_set"]) == (0.5, 0.05, "value", "all")
    fc_d7 = row(table, family="per_layer", layer_set="fc", client=7, stat="barrier")
    assert (fc_d7["value"], fc_d7["se"], fc_d7["k"], fc_d7["side"]) == (0.4, 0.02, 1, "server")
    assert row(table, family="per_layer", layer_set="fc", client=7, stat="self_referenced")["se"] == 0.04
    mean = row(table, family="per_layer", layer_set="conv", stat="mean")
    assert (mean["value"], mean["se"]) == (0.175, 0.015) and pd.isna(mean["client"])
    # cumulative sets: shallow joins from the input, deep from the output, random in its order
    assert row(table, family="deep", k=1, client=4, stat="barrier")["layer_set"] == "fc"
    assert row(table, family="shallow", k=2, client=4, stat="barrier")["layer_set"] == "conv+fc"
    assert row(table, family="random0", k=1, client=4, stat="barrier")["layer_set"] == "fc"
    assert row(table, family="window", layer_set="fc", client=7, stat="barrier")["value"] == 0.4
    assert row(table, family="endpoint", client=7)["value"] == 2.0
    assert row(table, family="reference")["value"] == 1.75
    middle = row(table, family="curve", alpha=0.5, stat="curve_barrier")
    assert (middle["value"], middle["se"]) == (1.0, 0.1)
    assert row(table, family="curve", alpha=0.5, stat="value")["value"] == 2.5


def test_local_rows_hold_summaries_and_each_clients_value_and_se():
    table = barrier_table([LOCAL])
    assert set(table["side"]) == {"local"}
    q90 = row(table, family="per_layer", layer_set="conv", stat="q90")
    assert q90["value"] == 1.8 and math.isnan(q90["se"])
    mean = row(table, family="full", stat="mean")
    # sqrt(sum_k p_k^2 se_k^2) over the clients
    assert mean["se"] == pytest.approx(math.sqrt((0.25 * 0.4) ** 2 + (0.75 * 0.3) ** 2))
    mine = row(table, family="shallow", k=2, client=4, stat="barrier")
    assert (mine["value"], mine["se"], mine["layer_set"]) == (4.0, 0.4, "conv+fc")
    assert row(table, family="endpoint", client=7, stat="value")["value"] == 10.0


def test_skipped_measurements_have_no_rows_and_rounds_stay_apart():
    skipped = {"round": 4, "split": "local-test", "skipped": "the strategy sends no average"}
    later = {**SERVER, "round": 5}
    table = barrier_table([SERVER, skipped, later])
    assert sorted(set(table["round"])) == [3, 5]
    assert len(table) == 2 * len(barrier_table([SERVER]))
    assert barrier_table([]).columns.tolist()[:3] == ["round", "split", "side"]


def test_distances_once_per_round_one_row_per_client():
    table = distance_table([SERVER, {**SERVER, "split": "train"}, LOCAL])
    assert len(table) == 6  # (2 clients + 1 pairwise) x 2 scopes, the train copy ignored
    assert row(table, scope="conv", quantity="l2_to_avg", client=7)["value"] == 0.25
    assert row(table, scope="model", quantity="pairwise_l2")["value"] == 2.0


def test_metrics_one_row_per_round_with_a_column_per_client():
    records = [{"round": 0, "global_test_accuracy": 10.0, "wall_seconds": 0.0},
               {"round": 1, "global_test_accuracy": 50.0, "train_loss": None, "clients": [0, 2],
                "local_test_accuracy_by_client": {"0": 40.0, "2": 60.0}}]
    table = metrics_table(records)
    assert table.index.tolist() == [0, 1] and table["round"].tolist() == [0, 1]
    assert table.loc[1, "local_test_accuracy/2"] == 60.0
    assert math.isnan(table.loc[0, "local_test_accuracy/2"]) and math.isnan(table.loc[1, "train_loss"])
    assert table.loc[1, "clients"] == [0, 2]
