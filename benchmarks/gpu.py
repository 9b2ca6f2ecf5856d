"""Rounds per second on one GPU: the small CNN and the normalization-free ResNet18.

Workload: round_overhead's (10 clients x 500 generated CIFAR-shaped examples, 1 local epoch, the
quickstart's evaluation), with the device chosen automatically (`train.device = "auto"`) and every
client sharing the one GPU (`simulation.num_gpus = "auto"`: all ten train at once on a machine
with ten cores or more). The server
evaluates and measures barriers on the same GPU. For each model it reports the steady-state
rounds per second with barriers off and with the default `[barriers]` settings, the same with
barriers off for other GPU shares (0.25: four clients at once; 1: one at a time), the whole run,
the peak GPU memory in use by all processes together (sampled every 20 ms; the card's total is
the out-of-memory limit), and a plain single-process loop doing the same SGD steps on the GPU.

    python -m benchmarks.gpu [--models cnn,resnet18] [--rounds 8] [--num-gpus auto,0.25,1]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.peak import PeakSampler
from benchmarks.round_overhead import WORKLOAD, fedbarrier_run, plain_loop, steady
from fedbarrier.config import load_config
from fedbarrier.data.federation import federation
from fedbarrier.fl.simulation import off_main_thread


class PeakGPUMemory(PeakSampler):
    """Largest memory in use on the GPU, by every process together, while the block runs."""

    interval = 0.02

    def read(self) -> int:
        free, self.total = torch.cuda.mem_get_info()
        return self.total - free


def bench(model: str, rounds: int, shares: list[str]) -> list[dict[str, float | str]]:
    """Rows for one model: the first GPU share with barriers off and on, the others off."""
    base = WORKLOAD + [f"model.name={model}", f"train.rounds={rounds}", "train.device=auto"]
    off_main_thread(lambda: federation(load_config(None, base).data, 0))  # not part of any timing
    plain = steady(off_main_thread(lambda: plain_loop(load_config(None, base), "cuda")))
    runs = [(shares[0], "on"), *((share, "off") for share in shares)]
    rows = []
    for share, barriers in sorted(runs, key=lambda r: (r[0] != shares[0], r[1])):
        overrides = base + [f"simulation.num_gpus={share}"]
        if barriers == "on":
            overrides = [o for o in overrides if o != "barriers.enabled=false"]
        with PeakGPUMemory() as mem:
            times, total = fedbarrier_run(load_config(None, overrides))
        rows.append({"model": model, "share": share, "barriers": barriers,
                     "round_s": steady(times), "run_s": total, "plain_round_s": plain,
                     "peak_gib": mem.peak / 2**30, "card_gib": mem.total / 2**30})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,resnet18")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--num-gpus", default="auto,0.25,1",
                        help="GPU shares per client to compare (barriers on for the first only)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device visible to torch; nothing to measure")
    shares = args.num_gpus.split(",")
    rows = [row for m in args.models.split(",") for row in bench(m, args.rounds, shares)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; 10 clients x 500 "
          f"examples, {args.rounds} rounds, medians from round 3; plain loop = one process, "
          "clients one after another on the GPU")
    print(f"{'model':<10}{'num_gpus':>9}{'barriers':>9}{'rounds/s':>10}{'s/round':>9}"
          f"{'run (s)':>9}{'peak GPU (GiB)':>16}{'plain rounds/s':>16}{'ratio':>7}")
    for r in rows:
        rs, plain = float(r["round_s"]), float(r["plain_round_s"])
        print(f"{r['model']:<10}{r['share']:>9}{r['barriers']:>9}{1 / rs:>10.2f}{rs:>9.3f}"
              f"{r['run_s']:>9.1f}{r['peak_gib']:>9.1f} / {r['card_gib']:<4.0f}"
              f"{1 / plain:>16.2f}{rs / plain:>7.2f}")
    return rows


if __name__ == "__main__":
    main()
