"""fedbarrier's round time against a plain single-process PyTorch loop doing the same work.

Workload (issue "Performance and scale"): 10 clients x 500 examples of generated CIFAR-shaped data
(3x32x32, 10 classes), the small CNN, 1 local epoch per round, and the quickstart's evaluation:
every client evaluates the new global model on its local test part, and the server evaluates it
on the global test set. Barriers are off (their cost is measured by `barrier_cost` and reported
separately here as the quickstart's hook overhead).

The plain loop trains the clients one after another with the same seeds, steps and learning rates
(`fedbarrier.learn.local.train`), averages like FedAvg and evaluates the same data. Both run on the same
machine in the same invocation; the table prints ratios.

    python -m benchmarks.round_overhead [--rounds 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedbarrier.config import Config, load_config
from fedbarrier.data.federation import federation
from fedbarrier.fl.simulation import off_main_thread
from fedbarrier.learn.local import evaluate, local_update
from fedbarrier.runtime.build import initial_model

WORKLOAD = [
    "data.dataset=synthetic", "data.synthetic_shape=[3, 32, 32]", "data.synthetic_classes=10",
    "data.synthetic_train_size=6250", "data.synthetic_test_size=1000", "data.synthetic_noise=4.0",
    "data.partition=iid", "data.num_clients=10", "data.test_fraction=0.2",  # 500 train each
    "model.name=cnn", "train.local_epochs=1", "train.batch_size=32", "barriers.enabled=false",
    "train.device=cpu",  # the CPU figures; benchmarks.gpu sets auto
    "output.plots=false",
]


def plain_loop(cfg: Config, device: torch.device | str = "cpu") -> list[float]:
    """Seconds per round of the same federated computation without Flower or Ray."""
    fed = federation(cfg.data, cfg.seed)
    model = initial_model(cfg, fed)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    device, t = torch.device(device), cfg.train
    times = []
    for r in range(1, t.rounds + 1):
        start = time.perf_counter()
        states, weights = [], []
        for pid in range(fed.num_clients):
            model.load_state_dict(global_state)
            data = fed.client_train(pid)
            local_update(model, data.x, data.y, t, run_seed=cfg.seed, client=pid, server_round=r,
                         device=device)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(len(data))
        total = sum(weights)
        global_state = {k: sum(w / total * s[k] for w, s in zip(weights, states))
                        for k in global_state}
        model.load_state_dict(global_state)
        for pid in range(fed.num_clients):
            test = fed.client_test(pid)
            evaluate(model, test.x, test.y, batch_size=t.eval_batch_size, device=device)
        evaluate(model, fed.splits.test.x, fed.splits.test.y, batch_size=t.eval_batch_size,
                 device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def fedbarrier_run(cfg: Config) -> tuple[list[float], float]:
    """Seconds per round (from metrics.jsonl) and the whole run's seconds, start-up included."""
    from fedbarrier.fl.simulation import run_experiment

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_experiment(cfg, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - start
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    return [m["wall_seconds"] for m in metrics if m["round"] > 0], total


def steady(times: list[float]) -> float:
    """Median of the rounds after the first two (worker start and warm-up excluded)."""
    rest = sorted(times[2:] or times)
    return rest[len(rest) // 2]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate the two sides this often; each figure is the best run")
    args = parser.parse_args(argv)
    cfg = load_config(None, WORKLOAD + [f"train.rounds={args.rounds}"])
    off_main_thread(lambda: federation(cfg.data, cfg.seed))  # not part of either timing
    # Best of alternating repeats: on a shared 2-core machine one run of either side varied by
    # up to 30 % (slow phases last minutes), and the fastest run is the least disturbed one.
    plain_rounds, plain_totals, fb_rounds, fb_totals = [], [], [], []
    for _ in range(args.repeats):
        # Both sides run their torch work off the main thread, as `fedbarrier run` does (see
        # fedbarrier.fl.simulation.off_main_thread): a leftover OpenMP team slows the other side.
        start = time.perf_counter()
        plain_rounds.append(steady(off_main_thread(lambda: plain_loop(cfg))))
        plain_totals.append(time.perf_counter() - start)
        fb, fb_total = fedbarrier_run(cfg)
        fb_rounds.append(steady(fb))
        fb_totals.append(fb_total)
    out = {"plain_round_s": min(plain_rounds), "fedbarrier_round_s": min(fb_rounds),
           "plain_run_s": min(plain_totals), "fedbarrier_run_s": min(fb_totals)}
    out["round_ratio"] = out["fedbarrier_round_s"] / out["plain_round_s"]
    out["run_ratio"] = out["fedbarrier_run_s"] / out["plain_run_s"]
    print(f"{args.rounds} rounds, 10 clients x 500 examples, small CNN, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads in the plain loop; best of "
          f"{args.repeats} alternating runs of each side")
    print(f"{'figure':<34}{'fedbarrier (s)':>16}{'plain loop (s)':>16}{'ratio':>8}")
    print(f"{'steady-state time per round':<34}{out['fedbarrier_round_s']:>16.2f}"
          f"{out['plain_round_s']:>16.2f}{out['round_ratio']:>8.2f}")
    print(f"{'whole run, start-up included':<34}{out['fedbarrier_run_s']:>16.2f}"
          f"{out['plain_run_s']:>16.2f}{out['run_ratio']:>8.2f}")
    return out


if __name__ == "__main__":
    main()
