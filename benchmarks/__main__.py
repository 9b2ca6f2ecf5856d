"""``python -m benchmarks``: every benchmark, each printing its table of ratios (docs/performance.md).

    python -m benchmarks            # barrier cost, round overhead, scale (about 25 minutes on 2 cores)
"""

from benchmarks import barrier_cost, round_overhead, scale

barrier_cost.main([])
round_overhead.main([])
scale.main([])
