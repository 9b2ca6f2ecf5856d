"""``python -m benchmarks``: every benchmark, each printing its table of ratios (docs/performance.md).

    python -m benchmarks                      # scale (and its resume check), barrier cost, local
                                              # cost, hook share, round overhead (~35 min, 2
                                              # cores, 7 GiB), then GPU rounds per second where
                                              # torch sees a GPU
    python -m benchmarks local_cost hook_share   # some of them, in the order given
    python -m benchmarks.<name> --help           # one benchmark's own options
"""

import argparse
import importlib
import sys

# Scale first: its peak RSS includes this process, which the other benchmarks grow (run after
# them, the 10-client figure read 4.2 GiB instead of 3.0).
ALL = ("scale", "scale_resume", "barrier_cost", "local_cost", "hook_share", "round_overhead",
       "align_cost", "gpu")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run fedbarrier's benchmarks with their default "
        "options; each prints a table of ratios measured within one run (docs/performance.md).")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all; gpu only where torch sees a GPU): "
                             f"{', '.join(ALL)}")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in ALL]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(ALL)}")
    import torch

    for name in args.names or ALL:
        if name == "gpu" and not args.names and not torch.cuda.is_available():
            continue
        importlib.import_module(f"benchmarks.{name}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
