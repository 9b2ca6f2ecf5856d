"""The benchmarks run (their numbers are printed, never asserted: machines are noisy)."""

from benchmarks.barrier_cost import bench


def test_barrier_cost_benchmark_runs_both_modes():
    rows = bench("cnn", (1, 8, 8), clients=2, n=16, repeats=1)
    assert [r["share"] for r in rows] == [False, True]
    assert all(r["evaluations"] == rows[0]["evaluations"] > 0 for r in rows)
    assert all(r["bound_s"] > 0 and r["hook_s"] > 0 for r in rows)


def test_hook_share_pairs_measured_with_unmeasured_rounds():
    from benchmarks.hook_share import split_rounds

    # every = 2 over 8 rounds: 2, 4, 6, 8 measured; from round 3 on: (4, 6, 8) vs (3, 5, 7)
    times = [9.0, 9.0, 1.0, 2.0, 1.5, 3.0, 1.2, 2.5]
    assert split_rounds(times) == (2.5, 1.2)
    # an odd last round is measured too (the hook always measures the last round)
    assert split_rounds([9.0, 9.0, 1.0, 2.0, 1.0, 2.0, 4.0]) == (2.0, 1.0)


def test_peak_sampler_keeps_the_largest_reading():
    import time

    from benchmarks.peak import PeakSampler

    class Readings(PeakSampler):
        interval = 0.001
        values = iter([3, 7, 5])

        def read(self) -> int:
            return next(self.values, 1)

    with Readings() as sampler:
        time.sleep(0.05)
    assert (sampler.start, sampler.peak) == (3, 7)


def test_local_cost_benchmark_scores_every_local_variant_once():
    from benchmarks.local_cost import bench as local_bench

    rows = local_bench("cnn", (1, 8, 8), n=16, repeats=1)
    assert [r["share"] for r in rows] == [False, True]
    # endpoint, full, 4 single layers, shallow 1..4 and deep 1..4, less the duplicates
    # (shallow/4 = deep/4 = full, shallow/1 = layer 1, deep/1 = layer 4): 10 distinct models
    assert all(r["evaluations"] == 10 and r["ratio"] > 0 for r in rows)


def test_the_runner_answers_help_and_refuses_unknown_names_without_running_any(capsys):
    import pytest

    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as help_exit:
        main(["--help"])
    assert help_exit.value.code == 0 and "local_cost" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["scale", "nope"])
    assert bad.value.code == 2 and "unknown benchmark 'nope'" in capsys.readouterr().err


def test_align_cost_benchmark_times_a_pair_and_the_hook_both_ways():
    from benchmarks.align_cost import hook_cost, pair_cost

    pair = pair_cost("cnn", (1, 8, 8), 16)
    assert pair["match_s"] > 0 and pair["forward_s"] > 0
    hook = hook_cost(clients=2, n=16)
    assert set(hook) == {"none", "weight-matching"} and all(v > 0 for v in hook.values())
