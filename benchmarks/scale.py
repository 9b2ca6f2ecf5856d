"""Scale: time per round, start-up and peak memory for 10 to 100,000 clients, 10 sampled per round.

Every client holds 20 generated examples (3x16x16, 10 classes; 16 to train, 4 to test) and
personal layers (strategy fedper, so each client keeps its own model on its side); barriers are
measured between the sampled clients every round. Peak RSS is sampled every 50 ms over the driver
and all its child processes (Ray's workers included). Targets: time per round grows with the
number of *sampled* clients, not the total; peak memory stays flat in the total. 100,000 clients
take about 90 s and 7 GiB (their 2 million images are generated and written first).

    python -m benchmarks.scale [--clients 10,1000,10000,100000] [--rounds 12]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.peak import PeakSampler
from fedbarrier.config import load_config
from fedbarrier.fl.simulation import run_experiment


class PeakRSS(PeakSampler):
    """Largest summed RSS of this process and its descendants while the block runs.

    The list of descendants is refreshed once a second: listing them scans every process in
    /proc, and doing that 20 times a second took 35 % of a core from the clients it measured.
    """

    refresh = 1.0

    def read(self) -> int:
        now = time.monotonic()
        if now - getattr(self, "_listed_at", -self.refresh) >= self.refresh:
            me = psutil.Process()
            self._procs = [me, *me.children(recursive=True)]
            self._listed_at = now
        total = 0
        for proc in self._procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total


def workload(num_clients: int, rounds: int, sampled: int = 10) -> list[str]:
    """The benchmark's config overrides for ``num_clients`` clients."""
    return [
        "data.dataset=synthetic", "data.synthetic_shape=[3, 16, 16]",
        f"data.synthetic_train_size={20 * num_clients}", "data.synthetic_test_size=500",
        "data.partition=iid", f"data.num_clients={num_clients}", "data.test_fraction=0.2",
        "data.min_partition_size=0", "model.name=cnn", f"train.rounds={rounds}",
        "strategy.name=fedper", f"strategy.clients_per_round={sampled}",
        f"strategy.fraction_evaluate={sampled / num_clients}", "barriers.n=200",
        "barriers.splits=[\"test\"]", "output.plots=false"]


def bench(num_clients: int, rounds: int, sampled: int = 10) -> dict[str, float]:
    cfg = load_config(None, workload(num_clients, rounds, sampled))
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as rss:
        start = time.perf_counter()
        run_experiment(cfg, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - start
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    walls = [m["wall_seconds"] for m in metrics if m["round"] >= 1]
    steady = sorted(walls[1:])  # round 1 also warms up the workers
    return {"clients": num_clients, "sampled": sampled, "round_s": steady[len(steady) // 2],
            "run_s": total, "start_s": total - sum(walls[1:]), "round_1_s": walls[0],
            "peak_rss_gib": rss.peak / 2**30}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    rows = [bench(int(n), args.rounds) for n in args.clients.split(",")]
    base = rows[0]
    # start-up: everything but rounds 2.., i.e. preparation, Ray, round 0 and 1 (the workers'
    # first messages), and the end of the run
    print(f"{'clients':>8}{'sampled':>9}{'s / round':>11}{'vs first':>10}{'run (s)':>10}"
          f"{'start-up (s)':>14}{'of it round 1':>15}{'peak RSS (GiB)':>16}{'vs first':>10}")
    for r in rows:
        print(f"{r['clients']:>8}{r['sampled']:>9}{r['round_s']:>11.2f}"
              f"{r['round_s'] / base['round_s']:>10.2f}{r['run_s']:>10.1f}"
              f"{r['start_s']:>14.1f}{r['round_1_s']:>15.1f}"
              f"{r['peak_rss_gib']:>16.2f}{r['peak_rss_gib'] / base['peak_rss_gib']:>10.2f}")
    return rows


if __name__ == "__main__":
    main()
