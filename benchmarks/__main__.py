"""``python -m benchmarks``: every benchmark, each printing its table of ratios (docs/performance.md).

    python -m benchmarks            # scale, barrier cost, hook share, round overhead (~30 min, 2 cores),
                                    # then GPU rounds per second where torch sees a GPU
"""

import torch

from benchmarks import barrier_cost, gpu, hook_share, local_cost, round_overhead, scale

# Scale first: its peak RSS includes this process, which the other benchmarks grow (run after
# them, the 10-client figure read 4.2 GiB instead of 3.0).
scale.main([])
barrier_cost.main([])
local_cost.main([])
hook_share.main([])
round_overhead.main([])
if torch.cuda.is_available():
    gpu.main([])
