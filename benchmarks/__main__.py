"""``python -m benchmarks``: run every benchmark and print its table of ratios."""

from benchmarks import barrier_cost

barrier_cost.main()
