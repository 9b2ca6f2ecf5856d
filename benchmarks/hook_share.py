"""What the barrier hook adds to a quickstart round, measured within one run.

Runs `experiments/quickstart.toml` (digits, 10 clients, Dirichlet 0.1, through Flower and Ray as
`fedbarrier run` does) with `barriers.every = 2`, so rounds with and without a measurement
alternate in the same run, and compares their median times (rounds 3 onward). Adjacent rounds
share the machine's state, which on a noisy machine varies more between runs (here +-30 %) than
the hook's cost. Each setting is one run; its measured rounds cost the same as with `every = 1`.
No target on the share (decided: the hook is judged against its forward-pass lower bound,
`benchmarks.barrier_cost` and `benchmarks.local_cost`); these rows tell users what `n`, `splits`
and `every` cost, as every run's `measure_seconds` / `measure_share` do.

    python -m benchmarks.hook_share [--rounds 48] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.round_overhead import fedbarrier_run
from fedbarrier.config import load_config
from fedbarrier.data.federation import federation
from fedbarrier.fl.simulation import off_main_thread

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"

SETTINGS: list[tuple[str, list[str]]] = [
    ("default [barriers] settings (server and local splits)", []),
    ("server splits only (train, test; n = 300)", ["barriers.splits=['train', 'test']"]),
    ("clients' local splits only", ["barriers.splits=['local-train', 'local-test']"]),
    ("4 default clients (max_defaults = 4)", ["barriers.max_defaults=4"]),
    ("blocking (overlap = false)", ["barriers.overlap=false"]),
    ("train split only, n = 150", ["barriers.splits=['train']", "barriers.n=150"]),
]


def split_rounds(times: list[float]) -> tuple[float, float]:
    """Median seconds of (measured, unmeasured) rounds from round 3 on (every = 2: even rounds
    and the last are measured)."""
    last = len(times)
    measured = [t for r, t in enumerate(times, start=1) if r >= 3 and (r % 2 == 0 or r == last)]
    plain = [t for r, t in enumerate(times, start=1) if r >= 3 and r % 2 == 1 and r != last]
    return statistics.median(measured), statistics.median(plain)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (medians pooled)")
    args = parser.parse_args(argv)
    base = ["output.plots=false", f"train.rounds={args.rounds}", "barriers.every=2"]
    # Data loading is not part of any timing; off the main thread, as `fedbarrier run` does it.
    off_main_thread(lambda: federation(load_config(QUICKSTART, base).data, 0))
    print(f"quickstart, {args.rounds} rounds, barriers every 2nd round; medians from round 3 on")
    print(f"{'setting':<58}{'with (s)':>10}{'without (s)':>13}{'added':>9}")
    out: dict[str, float] = {}
    for label, overrides in SETTINGS:
        pairs = [split_rounds(fedbarrier_run(load_config(QUICKSTART, base + overrides))[0])
                 for _ in range(args.repeats)]
        measured = statistics.median(p[0] for p in pairs)
        plain = statistics.median(p[1] for p in pairs)
        out[label] = measured / plain - 1.0
        print(f"{label:<58}{measured:>10.3f}{plain:>13.3f}{100 * out[label]:>+8.0f}%", flush=True)
    return out


if __name__ == "__main__":
    main()
