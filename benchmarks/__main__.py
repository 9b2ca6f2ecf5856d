"""``python -m benchmarks``: every benchmark, each printing its table of ratios (docs/performance.md).

    python -m benchmarks            # barrier cost, hook share, round overhead, scale (~30 min, 2 cores)
"""

from benchmarks import barrier_cost, hook_share, round_overhead, scale

barrier_cost.main([])
hook_share.main([])
round_overhead.main([])
scale.main([])
