"""The benchmarks run (their numbers are printed, never asserted: machines are noisy)."""

from benchmarks.barrier_cost import bench


def test_barrier_cost_benchmark_runs_both_modes():
    rows = bench("cnn", (1, 8, 8), clients=2, n=16, repeats=1)
    assert [r["share"] for r in rows] == [False, True]
    assert all(r["evaluations"] == rows[0]["evaluations"] > 0 for r in rows)
    assert all(r["bound_s"] > 0 and r["hook_s"] > 0 for r in rows)
